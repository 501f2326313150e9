//! `POST /v1.0/inject`: Momentum's REST injector (docs/momentum-compat.md#rest-injector). The template is rendered for
//! each recipient (its `keys`, plus `to` and `from` unless the keys override them) and read as an MCMT message by
//! [`crate::inbound::mcmt`], exactly as the ESMTP listener reads one: every push part becomes one notification
//! for the recipient's domain, with the part's `X-Device-Token` or else the local part of `to` as the device
//! token. The request is transactional: if any recipient fails, nothing is
//! injected. Success is `200` with Momentum's body; see docs/api.md for the failure answers (a gap in
//! Momentum's documentation).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::RestState;
use super::error::{
    ApiError, NOT_AN_OBJECT, describe_json_error, is_unpaired_surrogate, json_but_not_an_object,
    json_response, push_json_string, read_body, unpaired_surrogate_in, without_bom,
};
use super::template::{RenderError, Template, TemplateError};
use super::text::Text;
use crate::inbound::accept::{Intake, NoRoom, Refusal, Source};
use crate::inbound::mcmt::{self, Parsed, PartSubmission};
use crate::queue::message::{MessageId, Notification};

/// The most bytes the messages of one request may render to together (each recipient's within
/// [`super::template::MAX_RENDERED`]): a request of many recipients, each rendering a large message, would
/// otherwise cost minutes of copying; a larger one is refused with `413` before anything is accepted. Every
/// rendering counts, also one that fails (what it produced before it stopped), and each at least the template's
/// length, which rendering walks through whatever it produces. A recipient that lacks a key the template uses is
/// refused before rendering, and counts nothing.
pub const MAX_RENDERED_PER_REQUEST: usize = 256 << 20;

/// The request body, borrowed from the request bytes. Members Momentum defines that herald has no use for
/// (`site`, `vctx`) are accepted and ignored, as are unknown ones, so Momentum clients work unchanged.
#[derive(Debug, Deserialize)]
pub struct InjectBody<'a> {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(borrow, default)]
    pub recipients: Option<Vec<Recipient<'a>>>,
}

/// One entry of `recipients`.
#[derive(Debug, Deserialize)]
pub struct Recipient<'a> {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(borrow, default)]
    pub keys: Option<Keys<'a>>,
    /// Validation context for policy scripts; herald has none, so it is only checked to be an object.
    #[serde(default)]
    pub vctx: Option<Vctx>,
}

/// A recipient's `keys`: the substitution text of each key, under the key folded to lowercase as the template's
/// markers are (keys match case-insensitively). A string value is its decoded text, `null` nothing, any other value
/// its JSON text exactly as the request spells it (`19.90` stays `19.90`, an object keeps its members' order).
/// Values are never parsed into a tree: a large array or object is a slice of the request, borrowed like every
/// string that needs no unescaping. A key given twice (also in another case, `Name` and `name`) refuses the
/// request.
#[derive(Debug, Default)]
pub struct Keys<'a> {
    values: HashMap<Cow<'a, str>, Cow<'a, str>>,
    /// The length of the longest key: a longer one is not given, known without hashing it.
    longest: usize,
}

impl Keys<'_> {
    /// The substitution text of `key` (lowercase), if the recipient gives it.
    pub fn get(&self, key: &str) -> Option<&str> {
        if key.len() > self.longest {
            return None;
        }
        self.values.get(key).map(|v| v.as_ref())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Keys<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor<'a>(PhantomData<Keys<'a>>);

        impl<'de: 'a, 'a> Visitor<'de> for KeysVisitor<'a> {
            type Value = Keys<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys<'a>, A::Error> {
                let mut keys = HashMap::new();
                let mut longest = 0;
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    let text = key_text(value).map_err(|e| {
                        let why = if is_unpaired_surrogate(&e) {
                            unpaired_surrogate_in(value.get())
                        } else {
                            without_position(&e)
                        };
                        de::Error::custom(format_args!("key {key:?}: {why}"))
                    })?;
                    let lower = folded(&key);
                    longest = longest.max(lower.len());
                    match keys.entry(lower) {
                        Entry::Occupied(_) => {
                            return Err(de::Error::custom(format_args!(
                                "key {key:?} is given more than once (keys match case-insensitively); give each once"
                            )));
                        }
                        Entry::Vacant(entry) => {
                            entry.insert(text);
                        }
                    }
                }
                Ok(Keys {
                    values: keys,
                    longest,
                })
            }
        }

        deserializer.deserialize_map(KeysVisitor(PhantomData))
    }
}

/// `key` folded to lowercase as the template folds its markers' keys, borrowed when it already is.
fn folded<'a>(key: &Cow<'a, str>) -> Cow<'a, str> {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return key.clone();
    }
    let lower = key.to_lowercase();
    if lower == **key {
        key.clone()
    } else {
        Cow::Owned(lower)
    }
}

/// A recipient's `vctx`, checked to be an object; its contents are skipped, never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vctx;

impl<'de> Deserialize<'de> for Vctx {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VctxVisitor;

        impl<'de> Visitor<'de> for VctxVisitor {
            type Value = Vctx;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vctx, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Vctx)
            }
        }

        deserializer.deserialize_map(VctxVisitor)
    }
}

/// Parses the body (after a UTF-8 byte order mark, if it starts with one); on failure, parses it again while
/// tracking the path so the error names the field.
pub fn parse(body: &[u8]) -> Result<InjectBody<'_>, ApiError> {
    let body = without_bom(body);
    if json_but_not_an_object(body) {
        return Err(ApiError::bad_request(NOT_AN_OBJECT));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(describe_json_error::<InjectBody<'_>>(body, e)))
}

/// The paths of Momentum's injector: `/v1.0/inject`, and `/v1.0/inject/` as Momentum's examples spell it.
pub fn is_inject_path(path: &str) -> bool {
    matches!(path, "/v1.0/inject" | "/v1.0/inject/")
}

/// `error` in the shape `path` answers with: on the injector's paths Momentum's, with `"status": "failure"`, as
/// Momentum clients test that member (docs/api.md#errors). For the answers given before [`inject`] runs: the
/// address lists and API keys, injection turned off, 404 and 405.
pub fn error_for_path(path: &str, error: ApiError) -> ApiError {
    if is_inject_path(path) {
        error.momentum()
    } else {
        error
    }
}

/// `GET /v1.0/inject`: Momentum's connectivity check, an empty `200`.
pub async fn check() -> StatusCode {
    StatusCode::OK
}

/// The `/v1.0/inject` handler.
pub async fn inject(
    State(state): State<RestState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.settings.max_request_size)
        .await
        .map_err(ApiError::momentum)?;
    let source = Source {
        ip: super::peer_ip(&parts.extensions),
        protocol: "rest",
        batch_id: state.intake.next_id(),
        conn_id: super::conn_id(&state.intake, &parts.extensions),
    };
    let idempotency = state.idempotency.clone();
    let batch = body.clone();
    let handle = async move {
        inject_batch(
            &state.intake,
            &batch,
            &source,
            state.limits.max_notifications,
        )
        .await
        .map_err(ApiError::momentum)
    };
    match idempotency {
        Some(idem) => idem.run("inject", &parts, &body, true, handle).await,
        None => handle.await,
    }
}

/// What happened to one recipient.
enum Outcome {
    Injected(Vec<MessageId>),
    Failed(String),
}

async fn inject_batch(
    intake: &std::sync::Arc<Intake>,
    body: &Bytes,
    source: &Source,
    max_notifications: usize,
) -> Result<Response, ApiError> {
    let request = parse(body)?;
    let Some(template) = request.template.as_deref() else {
        return Err(ApiError::bad_request(
            "template: missing; give the message to inject",
        ));
    };
    let recipients = match request.recipients {
        None => {
            return Err(ApiError::bad_request(
                "recipients: missing; list at least one",
            ));
        }
        Some(r) if r.is_empty() => {
            return Err(ApiError::bad_request(
                "recipients: empty; list at least one",
            ));
        }
        Some(r) => r,
    };
    if recipients.len() > max_notifications {
        return Err(super::push::too_many(recipients.len(), max_notifications));
    }
    // The room is taken before anything is rendered; a message of several parts renders more notifications than
    // it has recipients, and the commit takes room for those too before it stores anything (or refuses the
    // request: 503, nothing stored). Rendering stops once the notifications are more than herald ever holds
    // (413: no retry would take them).
    let room = intake
        .reserve(recipients.len())
        .map_err(super::push::no_room_error)?;
    let template = Template::parse(template);
    let template_keys = template.distinct_keys();
    let mut domains: Vec<&str> = recipients
        .iter()
        .filter_map(|r| r.to.as_deref()?.rsplit_once('@').map(|(_, d)| d))
        .collect();
    domains.sort_unstable();
    domains.dedup();
    for domain in domains {
        intake.warm(None, domain).await;
    }
    // Rendering and reading every recipient's message is CPU work: the runtime moves its other tasks off this
    // thread meanwhile.
    let (outcomes, batch, first_failure) = crate::queue::in_place(|| {
        let mut outcomes = Vec::with_capacity(recipients.len());
        let mut batch = Vec::with_capacity(recipients.len());
        let mut first_failure = None;
        let mut budget = MAX_RENDERED_PER_REQUEST;
        for (i, recipient) in recipients.iter().enumerate() {
            let notifications = recipient_notifications(
                intake,
                &template,
                &template_keys,
                recipient,
                source,
                &mut budget,
            );
            if budget == 0 {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "recipients[{i}]: the messages rendered for this request exceed {MAX_RENDERED_PER_REQUEST} bytes \
                         together; send the recipients in several requests"
                    ),
                ));
            }
            match notifications {
                Ok(notifications) => {
                    outcomes.push(Outcome::Injected(
                        notifications.iter().map(|n| n.id).collect(),
                    ));
                    batch.extend(notifications);
                    if batch.len() > max_notifications {
                        return Err(super::push::too_many(batch.len(), max_notifications));
                    }
                    if let Err(never) = intake.can_ever_hold(batch.len()) {
                        return Err(never_fits(never, i, recipients.len()));
                    }
                }
                Err(Refusal::Temporary(m)) => return Err(ApiError::unavailable(m)),
                Err(Refusal::Permanent(m)) => {
                    first_failure.get_or_insert_with(|| format!("recipients[{i}]: {m}"));
                    outcomes.push(Outcome::Failed(m));
                }
            }
        }
        Ok::<_, ApiError>((outcomes, batch, first_failure))
    })?;
    if let Some(error) = first_failure {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            render(&outcomes, Some(&error)),
        ));
    }
    intake
        .commit_within(batch, source, room)
        .await
        .map_err(super::push::no_room_error)?;
    Ok(json_response(StatusCode::OK, render(&outcomes, None)))
}

/// The `413` of a request whose notifications are more than herald ever holds, found once the messages of its
/// recipients up to `recipients[i]` make that many. How many the whole request makes is known only by rendering
/// every recipient's message, which is not done: after its last recipient the count is the request's, before it
/// the request makes at least that many.
fn never_fits(never: NoRoom, i: usize, recipients: usize) -> ApiError {
    let NoRoom::Never { wanted, max } = never else {
        return super::push::no_room_error(never);
    };
    if i + 1 >= recipients {
        return super::push::no_room_error(never);
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "at least {wanted} notifications (those of the first {} of the request's {recipients} recipients) are \
             more than herald ever holds in memory at once (max_resident_notifications = {max}): split the request \
             into smaller ones",
            i + 1
        ),
    )
}

/// The notifications of one recipient: one per push part of its rendered message.
fn recipient_notifications(
    intake: &Intake,
    template: &Template<'_>,
    template_keys: &[&str],
    recipient: &Recipient<'_>,
    source: &Source,
    budget: &mut usize,
) -> Result<Vec<Notification>, Refusal> {
    let parts = recipient_submissions_within(template, template_keys, recipient, budget)
        .map_err(Refusal::Permanent)?;
    let many = parts.len() > 1;
    parts
        .into_iter()
        .map(|p| {
            intake.prepare(p.submission, source).map_err(|r| match r {
                Refusal::Permanent(m) if many => {
                    Refusal::Permanent(format!("part {}: {m}", p.part))
                }
                other => other,
            })
        })
        .collect()
}

/// A recipient's message: the template rendered with its keys (and `to`, `from`), read as MCMT, one submission
/// per push part. The error is the recipient's refusal as the answer shows it.
pub fn recipient_submissions(
    template: &Template<'_>,
    recipient: &Recipient<'_>,
) -> Result<Vec<PartSubmission>, String> {
    let mut unbounded = usize::MAX;
    recipient_submissions_within(
        template,
        &template.distinct_keys(),
        recipient,
        &mut unbounded,
    )
}

/// [`recipient_submissions`] within what is left of a request's rendering budget (`budget` bytes), which the
/// rendering's cost is taken from, whether it succeeds or not: the bytes it produced, at least the template's
/// length. A recipient without one of `template_keys` (the template's [`Template::distinct_keys`]) is refused
/// before rendering and costs nothing. A rendering the budget cannot pay for empties it (the request is then
/// refused as a whole, see [`MAX_RENDERED_PER_REQUEST`]).
pub fn recipient_submissions_within(
    template: &Template<'_>,
    template_keys: &[&str],
    recipient: &Recipient<'_>,
    budget: &mut usize,
) -> Result<Vec<PartSubmission>, String> {
    let to = recipient
        .to
        .as_deref()
        .ok_or_else(|| "to: missing; give the recipient address".to_string())?;
    let from = recipient.from.as_deref().unwrap_or("");
    if !to.contains('@') {
        return Err(format!(
            "to: {to:?} is not an address; write TOKEN@DOMAIN, where DOMAIN is the app's domain"
        ));
    }
    let keys = recipient.keys.as_ref();
    let lookup = |key: &str| match keys.and_then(|k| k.get(key)) {
        Some(v) => Some(Cow::Borrowed(v)),
        None if key == "to" => Some(Cow::Borrowed(to)),
        None if key == "from" => Some(Cow::Borrowed(from)),
        None => None,
    };
    if let Some(missing) = template_keys.iter().find(|k| lookup(k).is_none()) {
        let e = TemplateError::MissingKey((*missing).to_owned());
        return Err(format!("template: {e}"));
    }
    let rendered = template.render_at_most(lookup, *budget);
    // What the rendering cost: the bytes it produced, and at least the template it walked through.
    let cost = |rendered: usize| rendered.max(template.len());
    let message = match rendered {
        // Never down to 0, which stands for "used up" (a request rendering exactly the budget is accepted).
        Ok(message) if cost(message.len()) <= *budget => {
            *budget = (*budget - cost(message.len())).max(1);
            message
        }
        Ok(_) => {
            let e = TemplateError::TooLarge { limit: *budget };
            *budget = 0;
            return Err(format!("template: {e}"));
        }
        Err(RenderError {
            error: e @ TemplateError::TooLarge { limit },
            ..
        }) if limit == *budget => {
            *budget = 0;
            return Err(format!("template: {e}"));
        }
        Err(RenderError { error, rendered }) => {
            *budget = budget.saturating_sub(cost(rendered));
            return Err(format!("template: {error}"));
        }
    };
    let parsed = mcmt::parse(message.as_bytes()).map_err(|e| e.to_string())?;
    let Parsed::Mcmt(mcmt) = parsed else {
        return Err(
            "the message is not multipart/vnd.msys.mcmt: herald delivers push notifications only, \
             as message/vnd.msys.apn parts of an MCMT message"
                .into(),
        );
    };
    Ok(mcmt.submissions(&[to.to_owned()], from))
}

/// A key's substitution text: a string's decoded text (borrowed when it has no escapes), `null` as nothing, other
/// JSON values as their JSON text as the request spells it.
fn key_text(value: &RawValue) -> Result<Cow<'_, str>, serde_json::Error> {
    let raw = value.get();
    match raw {
        "null" => Ok(Cow::Borrowed("")),
        _ if raw.starts_with('"') => serde_json::from_str::<Text<'_>>(raw).map(|t| t.0),
        _ => Ok(Cow::Borrowed(raw)),
    }
}

/// What `e` says, without the position it names: read from a key's value alone, that position is inside the value,
/// not in the body (and serde_json would take it for the body's, read back from a custom error's message). The
/// body's deserializer adds the position of the value in the body.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Momentum's answer: one entry per recipient, then the overall status.
fn render(outcomes: &[Outcome], error: Option<&str>) -> String {
    let mut out = String::with_capacity(32 + outcomes.len() * 80);
    out.push_str("{\"results\":[");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match (outcome, error) {
            (Outcome::Injected(ids), None) => {
                let first = ids.first().copied().unwrap_or(MessageId::NONE);
                let _ = write!(
                    out,
                    "{{\"status\":\"success\",\"mid\":\"{first}\",\"reason\":\"250 {first}\""
                );
                if ids.len() > 1 {
                    out.push_str(",\"mids\":[");
                    for (j, id) in ids.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "\"{id}\"");
                    }
                    out.push(']');
                }
                out.push('}');
            }
            (Outcome::Injected(_), Some(_)) => out.push_str(
                "{\"status\":\"skipped\",\"reason\":\"451 not injected: the request is transactional and another recipient was refused\"}",
            ),
            (Outcome::Failed(reason), _) => {
                out.push_str("{\"status\":\"failure\",\"reason\":");
                push_json_string(&mut out, &format!("550 {reason}"));
                out.push('}');
            }
        }
    }
    out.push_str("],\"status\":");
    match error {
        None => out.push_str("\"success\""),
        Some(e) => {
            out.push_str("\"failure\",\"error\":");
            push_json_string(&mut out, e);
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use serde_json::Value;

    #[test]
    fn success_has_momentums_shape() {
        let id = MessageId::from_parts(0, 1_800_000_000 + 2045 * 1000, 0x5093C9D4);
        let v: Value = serde_json::from_str(&render(&[Outcome::Injected(vec![id])], None)).unwrap();
        // docs/momentum-compat.md#rest-injector, the documented success answer.
        assert_eq!(
            v,
            serde_json::json!({"results": [{"status": "success", "mid": "00/00-02045-5093C9D4",
                "reason": "250 00/00-02045-5093C9D4"}], "status": "success"})
        );
    }

    #[test]
    fn failure_marks_the_refused_and_the_skipped() {
        let id = MessageId::from_parts(0, 1_800_001_000, 1);
        let text = render(
            &[
                Outcome::Injected(vec![id]),
                Outcome::Failed("device token: bad".into()),
            ],
            Some("recipients[1]: device token: bad"),
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "failure");
        assert_eq!(v["error"], "recipients[1]: device token: bad");
        assert_eq!(v["results"][0]["status"], "skipped");
        assert_eq!(v["results"][1]["status"], "failure");
        assert_eq!(v["results"][1]["reason"], "550 device token: bad");
    }

    #[test]
    fn errors_on_the_injectors_paths_carry_momentums_status() {
        let refused = || ApiError::new(StatusCode::FORBIDDEN, "REST injection is off");
        for path in ["/v1.0/inject", "/v1.0/inject/"] {
            assert!(error_for_path(path, refused()).momentum, "{path}");
        }
        for path in ["/api/v1/push", "/v1.0/injectx", "/v1.0/inject/x", "/"] {
            assert!(!error_for_path(path, refused()).momentum, "{path}");
        }
    }

    #[tokio::test]
    async fn a_momentum_error_answer_says_failure() {
        let response = error_for_path(
            "/v1.0/inject",
            ApiError::new(StatusCode::UNAUTHORIZED, "missing API key"),
        )
        .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "missing API key", "status": "failure"})
        );
    }

    /// The keys of the first recipient of `body`.
    fn keys_of(body: &str) -> Result<HashMap<String, String>, ApiError> {
        let request = parse(body.as_bytes())?;
        let recipient = request.recipients.unwrap().into_iter().next().unwrap();
        Ok(recipient
            .keys
            .unwrap_or_default()
            .values
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect())
    }

    #[test]
    fn key_values_of_any_json_type_substitute() {
        let keys = keys_of(
            r#"{"recipients":[{"keys":{"s":"a\"b","n":9,"z":null,"o":{"a":true},"t":true}}]}"#,
        )
        .unwrap();
        assert_eq!(keys["s"], "a\"b");
        assert_eq!(keys["n"], "9");
        assert_eq!(keys["z"], "");
        assert_eq!(keys["o"], "{\"a\":true}");
        assert_eq!(keys["t"], "true");
    }

    /// Numbers, arrays and objects go in as the request spells them: no float rounding, no reordering, no
    /// respacing.
    #[test]
    fn key_values_keep_the_requests_json_text() {
        let keys = keys_of(
            r#"{"recipients":[{"keys":{"price":19.90,"e":1e2,"big":12345678901234567890123,
                "neg":-0.0,"o":{"z":1, "a":[2,1]},"a":[ 3 ,"x"]}}]}"#,
        )
        .unwrap();
        assert_eq!(keys["price"], "19.90");
        assert_eq!(keys["e"], "1e2");
        assert_eq!(keys["big"], "12345678901234567890123");
        assert_eq!(keys["neg"], "-0.0");
        assert_eq!(keys["o"], r#"{"z":1, "a":[2,1]}"#);
        assert_eq!(keys["a"], r#"[ 3 ,"x"]"#);
    }

    /// Strings without escapes are borrowed from the request, and values are never parsed into a tree.
    #[test]
    fn key_values_are_borrowed_from_the_request() {
        let body = r#"{"recipients":[{"keys":{"Name":"Ann","list":[1,2,3],"esc":"a\nb"}}]}"#;
        let request = parse(body.as_bytes()).unwrap();
        let keys = &request.recipients.as_ref().unwrap()[0]
            .keys
            .as_ref()
            .unwrap()
            .values;
        assert!(matches!(keys.get("name"), Some(Cow::Borrowed("Ann"))));
        assert!(matches!(keys.get("list"), Some(Cow::Borrowed("[1,2,3]"))));
        assert!(matches!(keys.get("esc"), Some(Cow::Owned(s)) if s == "a\nb"));
    }

    /// A key given twice, exactly or in another case (keys match case-insensitively), refuses the request naming
    /// the recipient's keys and the key.
    #[test]
    fn a_key_given_twice_is_refused() {
        for (body, key) in [
            (
                r#"{"recipients":[{"to":"a@b"},{"keys":{"name":"Ann","Name":"Bob"}}]}"#,
                "\"Name\"",
            ),
            (
                r#"{"recipients":[{"to":"a@b"},{"keys":{"name":"Ann","name":"Bob"}}]}"#,
                "\"name\"",
            ),
            (
                r#"{"recipients":[{"to":"a@b"},{"keys":{"ÉTÉ":1,"été":2}}]}"#,
                "\"été\"",
            ),
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(
                err.message.starts_with(&format!(
                    "recipients[1].keys: key {key} is given more than once"
                )),
                "{}",
                err.message
            );
        }
        let keys = keys_of(r#"{"recipients":[{"keys":{"Name":"Ann","name2":"Bob"}}]}"#).unwrap();
        assert_eq!(keys["name"], "Ann");
    }

    /// A string value serde_json takes as a raw value but not as text (a lone surrogate) refuses the request naming
    /// the recipient, the key and the value's place in the body, not a place inside the value.
    #[test]
    fn a_key_value_with_a_lone_surrogate_is_refused_where_it_stands() {
        let body = "{\"recipients\":[{\"to\":\"a@b\"},\n {\"keys\":{\"name\":\"Ann\",\n   \"token\":\"x\\ud800y\"}}]}";
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message.starts_with(
                "recipients[1].keys: key \"token\": the string holds an unpaired surrogate escape"
            ),
            "{}",
            err.message
        );
        // The value ends at column 22 of line 3.
        assert!(
            err.message.ends_with(" at line 3 column 22"),
            "{}",
            err.message
        );
        assert_eq!(
            err.message.matches(" at line ").count(),
            1,
            "{}",
            err.message
        );
    }

    /// `vctx` is checked to be an object, with the error naming it; its contents are not kept.
    #[test]
    fn vctx_must_be_an_object() {
        let request =
            parse(br#"{"recipients":[{"to":"a@b","vctx":{"x":[1,{"y":null}],"x":2}}]}"#).unwrap();
        assert_eq!(request.recipients.unwrap()[0].vctx, Some(Vctx));
        let err = parse(br#"{"recipients":[{"to":"a@b","vctx":[1,2]}]}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("recipients[0].vctx: invalid type: sequence, expected a map"),
            "{}",
            err.message
        );
        let err = parse(br#"{"recipients":[{"vctx":"x"}]}"#).unwrap_err();
        assert!(
            err.message.starts_with("recipients[0].vctx: invalid type"),
            "{}",
            err.message
        );
        let err = parse(br#"{"recipients":[{"keys":[1]}]}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("recipients[0].keys: invalid type: sequence, expected a map"),
            "{}",
            err.message
        );
    }

    /// A body starting with a UTF-8 byte order mark parses as the same body without it.
    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let request =
            parse(b"\xEF\xBB\xBF{\"template\":\"t\",\"recipients\":[{\"to\":\"a@b\"}]}").unwrap();
        assert_eq!(request.template.as_deref(), Some("t"));
        let err = parse(b"\xEF\xBB\xBF").unwrap_err();
        assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
    }

    /// The keys render into the template as the request spells them.
    #[test]
    fn rendering_uses_the_keys_text() {
        let request = parse(
            br#"{"recipients":[{"to":"7e57@apps.example","keys":{"Price":19.90,"Alert":"Ann"}}]}"#,
        )
        .unwrap();
        let template = Template::parse(
            "To: <%= :to %>\nMIME-Version: 1.0\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n--B\n\
             Content-Type: message/vnd.msys.apn\n\n\n{\"aps\":{\"alert\":\"[%= :alert %]\"},\"p\":<%= :price %>}\n--B--\n",
        );
        let recipient = &request.recipients.as_ref().unwrap()[0];
        let parts = recipient_submissions(&template, recipient).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            &parts[0].submission.payload[..],
            br#"{"aps":{"alert":"Ann"},"p":19.90}"#
        );
    }
}
