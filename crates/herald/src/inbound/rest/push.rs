//! `POST /api/v1/push`: herald's native batch API. One payload to many tokens (`tokens`), or many complete
//! notifications (`notifications`), for one domain. Every item is validated in one pass; the accepted ones are
//! made durable with a single [`Intake::commit`] (one group-committed write), and the answer, `202` with one
//! result per item in request order, is sent only after that. A rejected item (also one whose option is a number
//! out of range) does not fail the others; a problem with the request itself is a `400` naming the field, as is a
//! shared `payload` larger than APNs takes for any push type.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Unexpected};
use serde_json::value::RawValue;
use std::fmt::Write as _;

use super::RestState;
use super::error::{
    ApiError, describe_json_error, json_response, push_json_string, read_body, without_bom,
};
use super::text::Text;
use crate::inbound::accept::{Intake, NoRoom, Refusal, Source, Submission};
use crate::queue::message::MessageId;
use herald_apns::notification::PushHeaders;
use herald_apns::push::{MAX_EXPIRATION, PushError};

/// The request body. Borrowed from the request bytes: payloads stay the exact text the client sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody<'a> {
    #[serde(borrow, default)]
    domain: Option<Text<'a>>,
    #[serde(borrow, default)]
    tokens: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    notifications: Option<Vec<Item<'a>>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    /// APNs options for every item that does not set its own.
    #[serde(borrow, default)]
    topic: Option<Text<'a>>,
    #[serde(borrow, default)]
    push_type: Option<Text<'a>>,
    #[serde(borrow, default)]
    priority: Option<Number<'a>>,
    #[serde(borrow, default)]
    expiration: Option<Number<'a>>,
    #[serde(borrow, default)]
    collapse_id: Option<Text<'a>>,
    /// The binding every notification is delivered from; absent: `default`.
    #[serde(borrow, default)]
    binding: Option<Text<'a>>,
}

/// One entry of `notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(borrow)]
    token: Text<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow, default)]
    apns_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    topic: Option<Text<'a>>,
    #[serde(borrow, default)]
    push_type: Option<Text<'a>>,
    #[serde(borrow, default)]
    priority: Option<Number<'a>>,
    #[serde(borrow, default)]
    expiration: Option<Number<'a>>,
    #[serde(borrow, default)]
    collapse_id: Option<Text<'a>>,
}

/// A JSON number as the request spells it (`priority`, `expiration`). It is read into the option's range per
/// notification, so that a number out of range refuses only the notifications it applies to; any other JSON type
/// refuses the request, naming the field.
#[derive(Debug, Clone, Copy)]
struct Number<'a>(&'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Number<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        let unexpected = match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => return Ok(Number(text)),
            Some(b'"') => Unexpected::Other("string"),
            Some(b't') => Unexpected::Bool(true),
            Some(b'f') => Unexpected::Bool(false),
            Some(b'[') => Unexpected::Seq,
            Some(b'{') => Unexpected::Map,
            _ => Unexpected::Other(text),
        };
        Err(D::Error::invalid_type(unexpected, &"a number"))
    }
}

/// One notification's option: its own value (`notifications[i].name`), else the shared one (`name`).
struct NumberOption<'r, 'a> {
    name: &'static str,
    own: Option<(usize, Number<'a>)>,
    shared: Option<&'r Number<'a>>,
}

impl NumberOption<'_, '_> {
    /// The value that applies and where the request gives it, for a refusal's text.
    fn value(&self) -> Option<(String, &str)> {
        match (self.own, self.shared) {
            (Some((i, n)), _) => Some((format!("notifications[{i}].{}", self.name), n.0)),
            (None, Some(n)) => Some((self.name.to_owned(), n.0)),
            (None, None) => None,
        }
    }

    /// `priority`: a number from 0 to 255 goes on to the door's checks (which take 10, 5 and 1); any other refuses
    /// the notification in their words, naming where it is given.
    fn priority(&self) -> Result<Option<u8>, String> {
        let Some((field, text)) = self.value() else {
            return Ok(None);
        };
        text.parse::<u8>()
            .map(Some)
            .map_err(|_| format!("{field}: {}", PushError::BadPriority(text.to_owned())))
    }

    /// `expiration`: a whole number that fits 64 bits goes on to the door's checks (which take 0 to
    /// [`MAX_EXPIRATION`]); a larger one, a negative, fractional or exponent one refuses the notification in their
    /// words, naming where it is given.
    fn expiration(&self) -> Result<Option<u64>, String> {
        let Some((field, text)) = self.value() else {
            return Ok(None);
        };
        match text.parse::<u64>() {
            Ok(e) => Ok(Some(e)),
            Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
                "{field}: apns-expiration {text} is out of range: at most {MAX_EXPIRATION} (seconds since the epoch, 32 bits)"
            )),
            Err(_) => Err(format!(
                "{field}: {}",
                PushError::BadExpiration(text.to_owned())
            )),
        }
    }
}

/// The outcome of one item, in request order.
enum ItemResult {
    Accepted(MessageId),
    Rejected(String),
}

/// The `/api/v1/push` handler.
pub async fn push(State(state): State<RestState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.settings.max_request_size).await?;
    let source = Source {
        ip: super::peer_ip(&parts.extensions),
        protocol: "rest",
        batch_id: state.intake.next_id(),
        conn_id: super::conn_id(&state.intake, &parts.extensions),
    };
    let idempotency = state.idempotency.clone();
    let batch = body.clone();
    let handle = async move {
        let results = accept_batch(
            &state.intake,
            &batch,
            &source,
            state.limits.max_notifications,
        )
        .await?;
        Ok(json_response(
            StatusCode::ACCEPTED,
            render_results(&results),
        ))
    };
    match idempotency {
        Some(idem) => idem.run("push", &parts, &body, false, handle).await,
        None => handle.await,
    }
}

/// Parses, validates and commits one batch; the results are in request order.
async fn accept_batch(
    intake: &std::sync::Arc<Intake>,
    body: &Bytes,
    source: &Source,
    max_notifications: usize,
) -> Result<Vec<ItemResult>, ApiError> {
    let request = parse(body)?;
    let count = request.count();
    if count > max_notifications {
        return Err(too_many(count, max_notifications));
    }
    let domain = request.domain()?;
    let binding = request.binding()?;
    // Every item goes to this one domain: an unknown or undeliverable one refuses the whole request.
    intake.warm(binding.as_deref(), domain).await;
    intake
        .check_binding_domain(binding.as_deref(), domain)
        .map_err(|e| {
            let message = match &binding {
                Some(_) => format!("domain, binding: {e}"),
                None => format!("domain: {e}"),
            };
            // Credentials herald cannot read now are the operator's to fix: the sender retries (503).
            if e.is_temporary() {
                ApiError::unavailable(message)
            } else {
                ApiError::bad_request(message)
            }
        })?;
    // A request of the wrong shape is refused for that, whatever room the queue has; so is one payload for every
    // token that APNs takes for no push type, as each token would be refused for it.
    if let Form::Tokens(_, payload) = request.form()? {
        let headers = PushHeaders {
            topic: request.topic.as_deref().map(str::to_owned),
            push_type: request.push_type.as_deref().map(str::to_owned),
            ..PushHeaders::default()
        };
        intake
            .check_payload_size(binding.as_deref(), domain, &headers, payload.get().len())
            .map_err(refusal_error)?;
    }
    // The room is taken before anything is built, so that concurrent requests cannot together build more than the
    // queue holds.
    let room = intake.reserve(count).map_err(no_room_error)?;
    // Building and checking every notification is CPU work: the runtime moves its other tasks off this thread
    // meanwhile.
    let (results, accepted) = crate::queue::in_place(|| {
        let submissions = request.submissions(domain, &binding)?;
        let mut results = Vec::with_capacity(submissions.len());
        let mut accepted = Vec::with_capacity(submissions.len());
        for submission in submissions {
            match submission {
                Ok(submission) => take(intake, submission, source, &mut results, &mut accepted)?,
                Err(reason) => results.push(ItemResult::Rejected(reason)),
            }
        }
        Ok::<_, ApiError>((results, accepted))
    })?;
    intake
        .commit_reserved(accepted, source, room)
        .await
        .map_err(refusal_error)?;
    Ok(results)
}

/// A request the queue has no room for: 413 when it never will (more notifications than
/// `max_resident_notifications`: split it), else 503 (retry later).
pub(super) fn no_room_error(no_room: NoRoom) -> ApiError {
    match no_room {
        NoRoom::Never { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{no_room}: split the request into smaller ones"),
        ),
        NoRoom::Now(why) => refusal_error(Refusal::Temporary(why)),
    }
}

impl<'a> PushBody<'a> {
    /// The number of notifications the request carries (for the listener's limit, before anything is built).
    pub fn count(&self) -> usize {
        self.tokens
            .as_ref()
            .map_or(0, Vec::len)
            .max(self.notifications.as_ref().map_or(0, Vec::len))
    }

    /// The domain every notification goes to: required, trimmed.
    pub fn domain(&self) -> Result<&str, ApiError> {
        match self.domain.as_deref().map(str::trim) {
            None => Err(ApiError::bad_request(
                "domain: missing; name the app's domain",
            )),
            Some("") => Err(ApiError::bad_request(
                "domain: empty; name the app's domain",
            )),
            Some(d) => Ok(d),
        }
    }

    /// The binding every notification is delivered from; `None` for `default`.
    pub fn binding(&self) -> Result<Option<String>, ApiError> {
        match self.binding.as_deref().map(str::trim) {
            Some("") => Err(ApiError::bad_request(
                "binding: empty; name a declared binding or leave the field out for `default`",
            )),
            b => Ok(b.map(str::to_owned)),
        }
    }

    /// The request's form: `tokens` with the top-level `payload`, or `notifications` each with its own. Neither,
    /// both, an empty list, a missing `payload` or one next to `notifications` is a `400`.
    fn form(&self) -> Result<Form<'_, 'a>, ApiError> {
        match (&self.tokens, &self.notifications) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "tokens, notifications: give one of them, not both",
            )),
            (None, None) => Err(ApiError::bad_request(
                "tokens, notifications: one of them is required",
            )),
            (Some(tokens), None) => {
                if tokens.is_empty() {
                    return Err(ApiError::bad_request(
                        "tokens: empty; list at least one device token",
                    ));
                }
                let Some(payload) = self.payload else {
                    return Err(ApiError::bad_request(
                        "payload: missing; \"tokens\" needs the payload to send to each of them",
                    ));
                };
                Ok(Form::Tokens(tokens, payload))
            }
            (None, Some(items)) => {
                if items.is_empty() {
                    return Err(ApiError::bad_request(
                        "notifications: empty; list at least one notification",
                    ));
                }
                if self.payload.is_some() {
                    return Err(ApiError::bad_request(
                        "payload: not allowed with \"notifications\"; each notification carries its own",
                    ));
                }
                Ok(Form::Notifications(items))
            }
        }
    }

    /// The submissions, in request order: each token with the shared payload and options, or each notification
    /// with its own (and the shared options it leaves out). A request of the wrong shape is refused whole; a
    /// notification whose `priority` or `expiration` is a number out of range is refused alone (`Err`, the reason).
    pub fn submissions(
        &self,
        domain: &str,
        binding: &Option<String>,
    ) -> Result<Vec<Result<Submission, String>>, ApiError> {
        let submission = |token: &str, payload: Bytes, headers: PushHeaders| Submission {
            domain: domain.to_owned(),
            recipient: recipient(token, domain),
            token: token.to_owned(),
            payload,
            headers,
            sender: String::new(),
            binding: binding.clone(),
        };
        match self.form()? {
            Form::Tokens(tokens, payload) => {
                let payload = Bytes::copy_from_slice(payload.get().as_bytes());
                let (priority, expiration) = self.numbers(None);
                let (priority, expiration) = (priority.priority(), expiration.expiration());
                Ok(tokens
                    .iter()
                    .map(|token| {
                        let headers = PushHeaders {
                            topic: self.topic.as_deref().map(str::to_owned),
                            push_type: self.push_type.as_deref().map(str::to_owned),
                            priority: priority.clone()?,
                            expiration: expiration.clone()?,
                            collapse_id: self.collapse_id.as_deref().map(str::to_owned),
                            apns_id: None,
                        };
                        Ok(submission(token, payload.clone(), headers))
                    })
                    .collect())
            }
            Form::Notifications(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let (priority, expiration) = self.numbers(Some((i, item)));
                    let headers = PushHeaders {
                        topic: either(&item.topic, &self.topic),
                        push_type: either(&item.push_type, &self.push_type),
                        priority: priority.priority()?,
                        expiration: expiration.expiration()?,
                        collapse_id: either(&item.collapse_id, &self.collapse_id),
                        apns_id: item.apns_id.as_deref().map(str::to_owned),
                    };
                    let payload = Bytes::copy_from_slice(item.payload.get().as_bytes());
                    Ok(submission(&item.token, payload, headers))
                })
                .collect()),
        }
    }
}

impl<'a> PushBody<'a> {
    /// The `priority` and `expiration` of notification `item` (index and entry; `None` for the `tokens` form,
    /// which has only the shared ones).
    fn numbers(
        &self,
        item: Option<(usize, &Item<'a>)>,
    ) -> (NumberOption<'_, 'a>, NumberOption<'_, 'a>) {
        let own = |pick: fn(&Item<'a>) -> Option<Number<'a>>| {
            item.and_then(|(i, it)| Some((i, pick(it)?)))
        };
        (
            NumberOption {
                name: "priority",
                own: own(|it| it.priority),
                shared: self.priority.as_ref(),
            },
            NumberOption {
                name: "expiration",
                own: own(|it| it.expiration),
                shared: self.expiration.as_ref(),
            },
        )
    }
}

/// A request's form, checked by [`PushBody::form`].
enum Form<'r, 'a> {
    /// One payload to each token.
    Tokens(&'r [Text<'a>], &'a RawValue),
    /// Notifications with their own payloads.
    Notifications(&'r [Item<'a>]),
}

/// Validates one item: accepted ones join the batch to commit, rejected ones keep their reason.
fn take(
    intake: &Intake,
    submission: Submission,
    source: &Source,
    results: &mut Vec<ItemResult>,
    accepted: &mut Vec<crate::queue::message::Notification>,
) -> Result<(), ApiError> {
    match intake.prepare(submission, source) {
        Ok(n) => {
            results.push(ItemResult::Accepted(n.id));
            accepted.push(n);
        }
        Err(Refusal::Permanent(reason)) => results.push(ItemResult::Rejected(reason)),
        Err(Refusal::Temporary(reason)) => return Err(ApiError::unavailable(reason)),
    }
    Ok(())
}

/// 413 for a request that carries more notifications than the listener's `max_notifications_per_request`.
pub(super) fn too_many(count: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request carries {count} notifications; this listener's max_notifications_per_request is {max}: split it into smaller requests"
        ),
    )
}

/// A refusal of the whole request: temporary ones are 503, the rest 400.
pub(super) fn refusal_error(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Temporary(m) => ApiError::unavailable(m),
        Refusal::Permanent(m) => ApiError::bad_request(m),
    }
}

fn either(own: &Option<Text<'_>>, default: &Option<Text<'_>>) -> Option<String> {
    own.as_deref().or(default.as_deref()).map(str::to_owned)
}

/// The recipient the logs show for a native submission: `token@domain`.
fn recipient(token: &str, domain: &str) -> String {
    let mut r = String::with_capacity(token.len() + 1 + domain.len());
    r.push_str(token);
    r.push('@');
    r.push_str(domain);
    r
}

/// Parses the body (after a UTF-8 byte order mark, if it starts with one); on failure, parses it again while
/// tracking the path so the error names the field.
pub fn parse(body: &[u8]) -> Result<PushBody<'_>, ApiError> {
    let body = without_bom(body);
    match serde_json::from_slice::<PushBody<'_>>(body) {
        Ok(request) => Ok(request),
        Err(first) => Err(ApiError::bad_request(describe_json_error::<PushBody<'_>>(
            body, first,
        ))),
    }
}

/// `{"results":[…]}` in request order.
fn render_results(results: &[ItemResult]) -> String {
    let mut out = String::with_capacity(16 + results.len() * 48);
    out.push_str("{\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match r {
            ItemResult::Accepted(id) => {
                let _ = write!(out, "{{\"status\":\"accepted\",\"id\":\"{id}\"}}");
            }
            ItemResult::Rejected(reason) => {
                out.push_str("{\"status\":\"rejected\",\"reason\":");
                push_json_string(&mut out, reason);
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_the_clients_bytes() {
        let body =
            br#"{"domain":"d","tokens":["aa"],"payload":{ "aps" : {"alert":"x"} ,"k":1.50}}"#;
        let request = parse(body).unwrap();
        assert_eq!(
            request.payload.unwrap().get(),
            r#"{ "aps" : {"alert":"x"} ,"k":1.50}"#
        );
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let body = br#"{"domain":"d","notifications":[{"token":"aa","payload":{}},{"token":7,"payload":{}}]}"#;
        let err = parse(body).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message
                .starts_with("notifications[1].token: invalid type"),
            "{}",
            err.message
        );
        let err =
            parse(br#"{"domain":"d","tokens":["aa"],"payload":{},"colapse_id":"x"}"#).unwrap_err();
        assert!(err.message.contains("colapse_id"), "{}", err.message);
        let err = parse(br#"{"domain":"d","notifications":[{"payload":{}}]}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("notifications[0]: missing field `token`"),
            "{}",
            err.message
        );
    }

    /// A body starting with a UTF-8 byte order mark parses as the same body without it; the payload's bytes
    /// are the client's.
    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let request =
            parse(b"\xEF\xBB\xBF{\"domain\":\"d\",\"tokens\":[\"aa\"],\"payload\":{\"k\":1}}")
                .unwrap();
        assert_eq!(request.domain().unwrap(), "d");
        assert_eq!(request.payload.unwrap().get(), r#"{"k":1}"#);
        // Only one, only at the start.
        for body in [&b"\xEF\xBB\xBF\xEF\xBB\xBF{}"[..], b" \xEF\xBB\xBF{}"] {
            let err = parse(body).unwrap_err();
            assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
        }
    }

    /// The shape of a request is checked on its own, before anything is built or any room taken.
    #[test]
    fn the_form_is_checked_on_its_own() {
        let form = |body: &[u8]| {
            parse(body)
                .unwrap()
                .form()
                .map(|_| ())
                .map_err(|e| e.message)
        };
        assert_eq!(
            form(br#"{"domain":"d","tokens":["aa"]}"#).unwrap_err(),
            "payload: missing; \"tokens\" needs the payload to send to each of them"
        );
        assert_eq!(
            form(br#"{"domain":"d"}"#).unwrap_err(),
            "tokens, notifications: one of them is required"
        );
        assert!(form(br#"{"domain":"d","tokens":["aa"],"payload":{}}"#).is_ok());
        assert!(form(br#"{"notifications":[{"token":"aa","payload":{}}]}"#).is_ok());
    }

    /// `priority` and `expiration` take any JSON number (read per notification) or `null` (absent); another type
    /// refuses the request naming the field.
    #[test]
    fn numeric_options_take_any_number_and_only_numbers() {
        let request = parse(
            br#"{"domain":"d","tokens":["aa"],"payload":{},"priority":null,"expiration":-1.5e300}"#,
        )
        .unwrap();
        assert!(request.priority.is_none());
        assert_eq!(request.expiration.map(|n| n.0), Some("-1.5e300"));
        for (value, found) in [
            (r#""10""#, "string"),
            ("true", "boolean `true`"),
            ("[10]", "sequence"),
            ("{}", "map"),
        ] {
            let body = format!(
                r#"{{"domain":"d","notifications":[{{"token":"aa","payload":{{}},"priority":{value}}}]}}"#
            );
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(
                err.message.starts_with(&format!(
                    "notifications[0].priority: invalid type: {found}, expected a number"
                )),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = parse(br#"{"domain":"d","#).unwrap_err();
        assert!(err.message.starts_with("invalid JSON: "), "{}", err.message);
        assert!(err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn results_render_in_order_with_escaped_reasons() {
        let id = MessageId::from_parts(1, 1_800_000_000 + 3 * 1000, (2 << 32) | 4);
        let text = render_results(&[
            ItemResult::Accepted(id),
            ItemResult::Rejected("device token has a non-hex character 'z' at \"3\"".into()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["results"][0]["status"], "accepted");
        assert_eq!(v["results"][0]["id"], id.to_string());
        assert_eq!(v["results"][1]["status"], "rejected");
        assert_eq!(
            v["results"][1]["reason"],
            "device token has a non-hex character 'z' at \"3\""
        );
    }
}
