//! `POST /v1.0/inject`: Momentum's REST injector (docs/momentum-compat.md#rest-injector). The template is rendered for
//! each recipient (its `keys`, plus `to` and `from` unless the keys override them) and read as an MCMT message by
//! [`crate::inbound::mcmt`], exactly as the ESMTP listener reads one: every push part becomes one notification
//! for the recipient's domain, with the part's `X-Device-Token` or else the local part of `to` as the device
//! token. The request is transactional: if any recipient fails, nothing is
//! injected. Success is `200` with Momentum's body; see docs/api.md for the failure answers (a gap in
//! Momentum's documentation).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::RestState;
use super::error::{ApiError, describe_json_error, json_response, push_json_string, read_body};
use super::template::{Template, TemplateError};
use crate::inbound::accept::{Intake, Refusal, Source};
use crate::inbound::mcmt::{self, Parsed, PartSubmission};
use crate::queue::message::{MessageId, Notification};

/// The most bytes the messages of one request may render to together (each recipient's within
/// [`super::template::MAX_RENDERED`]): a request of many recipients, each rendering a large message, would
/// otherwise cost minutes of copying; a larger one is refused with `413` before anything is accepted.
pub const MAX_RENDERED_PER_REQUEST: usize = 256 << 20;

/// The request body. Members Momentum defines that herald has no use for (`site`, `vctx`) are accepted and
/// ignored, as are unknown ones, so Momentum clients work unchanged.
#[derive(Debug, Deserialize)]
pub struct InjectBody {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub recipients: Option<Vec<Recipient>>,
}

/// One entry of `recipients`.
#[derive(Debug, Deserialize)]
pub struct Recipient {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub keys: Option<Map<String, Value>>,
    /// Validation context for policy scripts; herald has none, so it is only checked to be an object.
    #[serde(default)]
    pub vctx: Option<Map<String, Value>>,
}

/// Parses the body; on failure, parses it again while tracking the path so the error names the field.
pub fn parse(body: &[u8]) -> Result<InjectBody, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(describe_json_error::<InjectBody>(body, e)))
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
    // request: 503, nothing stored).
    let room = intake
        .reserve(recipients.len())
        .map_err(super::push::no_room_error)?;
    let template = Template::parse(template);
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
            let notifications =
                recipient_notifications(intake, &template, recipient, source, &mut budget);
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
        .commit_reserved(batch, source, room)
        .await
        .map_err(super::push::refusal_error)?;
    Ok(json_response(StatusCode::OK, render(&outcomes, None)))
}

/// The notifications of one recipient: one per push part of its rendered message.
fn recipient_notifications(
    intake: &Intake,
    template: &Template<'_>,
    recipient: &Recipient,
    source: &Source,
    budget: &mut usize,
) -> Result<Vec<Notification>, Refusal> {
    let parts =
        recipient_submissions_within(template, recipient, budget).map_err(Refusal::Permanent)?;
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
    recipient: &Recipient,
) -> Result<Vec<PartSubmission>, String> {
    let mut unbounded = usize::MAX;
    recipient_submissions_within(template, recipient, &mut unbounded)
}

/// [`recipient_submissions`] within what is left of a request's rendering budget (`budget` bytes), which the
/// rendered message's size is taken from; a message the budget cannot hold empties it (the request is then
/// refused as a whole, see [`MAX_RENDERED_PER_REQUEST`]).
pub fn recipient_submissions_within(
    template: &Template<'_>,
    recipient: &Recipient,
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
    let keys: HashMap<String, Cow<'_, str>> = recipient
        .keys
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_lowercase(), key_text(v)))
        .collect();
    let rendered = template.render_at_most(
        |key| match keys.get(key) {
            Some(v) => Some(Cow::Borrowed(v.as_ref())),
            None if key == "to" => Some(Cow::Borrowed(to)),
            None if key == "from" => Some(Cow::Borrowed(from)),
            None => None,
        },
        *budget,
    );
    let message = match rendered {
        Ok(message) => {
            // Never down to 0, which stands for "used up" (a request rendering exactly the budget is accepted).
            *budget = budget.saturating_sub(message.len()).max(1);
            message
        }
        Err(e @ TemplateError::TooLarge { limit }) if limit == *budget => {
            *budget = 0;
            return Err(format!("template: {e}"));
        }
        Err(e) => return Err(format!("template: {e}")),
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

/// A key's substitution text: strings as they are, other JSON values as their JSON text, `null` as nothing.
fn key_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
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

    #[test]
    fn key_values_of_any_json_type_substitute() {
        assert_eq!(key_text(&Value::from("a\"b")), "a\"b");
        assert_eq!(key_text(&Value::from(9)), "9");
        assert_eq!(key_text(&Value::Null), "");
        assert_eq!(key_text(&serde_json::json!({"a": true})), "{\"a\":true}");
    }
}
