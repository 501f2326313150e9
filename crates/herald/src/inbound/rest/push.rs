//! `POST /api/v1/push`: herald's native batch API. One payload to many tokens (`tokens`), or many complete
//! notifications (`notifications`), for one domain. Every item is validated in one pass; the accepted ones are
//! made durable with a single [`Intake::commit`] (one group-committed write), and the answer, `202` with one
//! result per item in request order, is sent only after that. A rejected item (also one whose own option APNs does
//! not take, named `notifications[i].FIELD`) does not fail the others; a problem with the request itself is a `400`
//! naming the field, as is a shared option APNs does not take whatever the push type, or a shared `payload` larger
//! than APNs takes for any push type. The door says which option a refusal is about ([`DoorRefusal`]), and the
//! item's reason names it where the request gives it ([`OptionFields`]).

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Unexpected};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

use super::RestState;
use super::error::{
    ApiError, NOT_AN_OBJECT, describe_json_error, json_but_not_an_object, json_response,
    push_json_string, read_body, without_bom,
};
use super::text::Text;
use crate::inbound::accept::{
    ApnsOption, DoorRefusal, Intake, NoRoom, OptionRefusal, Refusal, Source, Submission,
};
use crate::queue::message::MessageId;
use herald_apns::notification::PushHeaders;
use herald_apns::push::{MAX_EXPIRATION, Priority, PushError, validate_expiration};

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

/// A JSON number as the request spells it (`priority`, `expiration`). A notification's own is read into the
/// option's range with that notification, so that a number out of range refuses only it; the shared one is read
/// once for the request ([`PushBody::check_shared_options`]). Any other JSON type refuses the request, naming the
/// field and the value.
#[derive(Debug, Clone, Copy)]
struct Number<'a>(&'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Number<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        let string;
        let unexpected = match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => return Ok(Number(text)),
            // Named with its value, as a number written as a string ("10") is the usual mistake.
            Some(b'"') => {
                string = serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned());
                Unexpected::Str(&string)
            }
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
    fn value(&self) -> Option<(Cow<'static, str>, &str)> {
        Some((self.field()?, self.text()?))
    }

    /// Where the request gives the value that applies: `notifications[i].name` for a notification's own, `name`
    /// for the shared one; `None` when neither is given.
    fn field(&self) -> Option<Cow<'static, str>> {
        match (self.own, self.shared) {
            (Some((i, _)), _) => Some(Cow::Owned(format!("notifications[{i}].{}", self.name))),
            (None, Some(_)) => Some(Cow::Borrowed(self.name)),
            (None, None) => None,
        }
    }

    fn text(&self) -> Option<&str> {
        self.own.map(|(_, n)| n.0).or(self.shared.map(|n| n.0))
    }

    /// `priority`: 10, 5 or 1 (what APNs takes); any other number refuses the notification in the words of the
    /// header checks, naming where it is given. Whether the push type and route take it is the door's to check.
    fn priority(&self) -> Result<Option<u8>, String> {
        let Some((field, text)) = self.value() else {
            return Ok(None);
        };
        let bad = || format!("{field}: {}", PushError::BadPriority(text.to_owned()));
        let p = text.parse::<u8>().map_err(|_| bad())?;
        Priority::from_u8(p).map_err(|_| bad())?;
        Ok(Some(p))
    }

    /// `expiration`: a whole number from 0 to [`MAX_EXPIRATION`]; any other (larger, negative, fractional, in
    /// exponent notation) refuses the notification in the words of the header checks, naming where it is given.
    /// Whether the push type takes it (push-to-talk takes only 0) is the door's to check.
    fn expiration(&self) -> Result<Option<u64>, String> {
        let Some((field, text)) = self.value() else {
            return Ok(None);
        };
        match text.parse::<u64>() {
            Ok(e) => validate_expiration(e)
                .map(|_| Some(e))
                .map_err(|why| format!("{field}: {why}")),
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

/// Where the request gives a notification's options, to name the option a refusal is about the way the request
/// gives it: `notifications[i].FIELD` for the notification's own value, `FIELD` for the shared one.
#[derive(Debug, Clone, Copy)]
struct OptionFields {
    /// The notification's place in `notifications`; `None` in the `tokens` form.
    item: Option<usize>,
    /// The options the notification sets itself.
    own: Options,
    /// The options the request sets for every notification that does not set its own.
    shared: Options,
}

impl OptionFields {
    /// Where the request gives the value of `option` that applies; `None` when it gives none (herald chose it).
    fn field(&self, option: ApnsOption) -> Option<Cow<'static, str>> {
        match self.item {
            Some(i) if self.own.has(option) => {
                Some(Cow::Owned(format!("notifications[{i}].{}", option.field())))
            }
            _ if self.shared.has(option) => Some(Cow::Borrowed(option.field())),
            _ => None,
        }
    }

    /// The reason for the door's refusal of a notification: one of an option's value names the option where the
    /// request gives it (`notifications[2].collapse_id: apns-collapse-id is 65 bytes; …`, `topic: apns-topic is
    /// empty`); any other, or one of a value herald chose, is the door's text.
    fn reason(&self, refused: Option<OptionRefusal>, text: String) -> String {
        match refused {
            Some(o) => match self.field(o.option) {
                Some(field) => format!("{field}: {}", o.why),
                None => text,
            },
            None => text,
        }
    }
}

/// A set of [`ApnsOption`]s.
#[derive(Debug, Clone, Copy, Default)]
struct Options(u8);

impl Options {
    /// The options of `given` whose value is given.
    fn given(given: [(ApnsOption, bool); 6]) -> Options {
        Options(
            given
                .into_iter()
                .filter(|(_, is)| *is)
                .fold(0, |set, (o, _)| set | Options::bit(o)),
        )
    }

    fn bit(option: ApnsOption) -> u8 {
        1 << (option as u8)
    }

    fn has(self, option: ApnsOption) -> bool {
        self.0 & Options::bit(option) != 0
    }
}

/// One item's submission and where its options come from, or why the item is refused before it reaches the door.
type ItemSubmission = Result<(Submission, OptionFields), String>;

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
    // A request of the wrong shape is refused for that, whatever room the queue has; so is a shared option APNs does
    // not take whatever the push type, and one payload for every token that APNs takes for no push type, as each
    // notification would be refused for them.
    let form = request.form()?;
    request.check_shared_options()?;
    if let Form::Tokens(_, payload) = form {
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
    let build = || {
        let submissions = request.submissions(domain, &binding)?;
        let mut results = Vec::with_capacity(submissions.len());
        let mut accepted = Vec::with_capacity(submissions.len());
        for submission in submissions {
            match submission {
                Ok((submission, fields)) => take(
                    intake,
                    submission,
                    &fields,
                    source,
                    &mut results,
                    &mut accepted,
                )?,
                Err(reason) => results.push(ItemResult::Rejected(reason)),
            }
        }
        Ok::<_, ApiError>((results, accepted))
    };
    let (results, accepted) = build_in_place_above(count, build)?;
    intake
        .commit_within(accepted, source, room)
        .await
        .map_err(no_room_error)?;
    Ok(results)
}

/// Requests of more notifications than this are built and checked with the runtime's other tasks moved off the
/// thread ([`crate::queue::in_place`]), as that is CPU work long enough to hold them up. Moving them has a cost of
/// its own (the thread is handed off and another takes its place), which a request of a few notifications, the
/// common case at high rates, does not repay: those are built on the spot.
const IN_PLACE_ABOVE: usize = 64;

/// Runs `build`, the building and checking of a request's `count` notifications: in place of the runtime's other
/// tasks when they are more than [`IN_PLACE_ABOVE`], on the spot otherwise.
fn build_in_place_above<T>(count: usize, build: impl FnOnce() -> T) -> T {
    if count > IN_PLACE_ABOVE {
        #[cfg(test)]
        tests::BUILT_IN_PLACE.with(|n| n.set(n.get() + 1));
        crate::queue::in_place(build)
    } else {
        build()
    }
}

/// A request the queue has no room for, at its reservation or its commit: 413 when it never will (more
/// notifications than `max_resident_notifications`: split it), else 503 (retry later).
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

    /// Refuses the request (`400`, naming the field) for a shared option APNs does not take whatever the push
    /// type ([`ApnsOption::refused_alone`]): every notification that does not set its own would be refused for it.
    fn check_shared_options(&self) -> Result<(), ApiError> {
        let (priority, expiration) = self.numbers(None);
        priority.priority().map_err(ApiError::bad_request)?;
        expiration.expiration().map_err(ApiError::bad_request)?;
        for (option, value) in [
            (ApnsOption::Topic, &self.topic),
            (ApnsOption::PushType, &self.push_type),
            (ApnsOption::CollapseId, &self.collapse_id),
        ] {
            if let Some(why) = value.as_deref().and_then(|v| option.refused_alone(v)) {
                return Err(ApiError::bad_request(format!("{}: {why}", option.field())));
            }
        }
        Ok(())
    }

    /// The options the request sets for every notification that does not set its own.
    fn shared_options(&self) -> Options {
        Options::given([
            (ApnsOption::Topic, self.topic.is_some()),
            (ApnsOption::PushType, self.push_type.is_some()),
            (ApnsOption::Priority, self.priority.is_some()),
            (ApnsOption::Expiration, self.expiration.is_some()),
            (ApnsOption::CollapseId, self.collapse_id.is_some()),
            (ApnsOption::ApnsId, false),
        ])
    }

    /// The submissions, in request order: each token with the shared payload and options, or each notification
    /// with its own (and the shared options it leaves out), with where the request gives its options.
    /// A request of the wrong shape is refused whole; a notification whose own `priority` or `expiration` APNs
    /// does not take is refused alone (`Err`, the reason).
    fn submissions(
        &self,
        domain: &str,
        binding: &Option<String>,
    ) -> Result<Vec<ItemSubmission>, ApiError> {
        let submission = |token: &str, payload: Bytes, headers: PushHeaders| Submission {
            domain: domain.to_owned(),
            recipient: recipient(token, domain),
            token: token.to_owned(),
            payload,
            headers,
            sender: String::new(),
            binding: binding.clone(),
        };
        let shared = self.shared_options();
        match self.form()? {
            Form::Tokens(tokens, payload) => {
                let payload = Bytes::copy_from_slice(payload.get().as_bytes());
                let (priority, expiration) = self.numbers(None);
                // Checked once for the request ([`PushBody::check_shared_options`]).
                let p = priority.priority().map_err(ApiError::bad_request)?;
                let e = expiration.expiration().map_err(ApiError::bad_request)?;
                let fields = OptionFields {
                    item: None,
                    own: Options::default(),
                    shared,
                };
                Ok(tokens
                    .iter()
                    .map(|token| {
                        let headers = PushHeaders {
                            topic: self.topic.as_deref().map(str::to_owned),
                            push_type: self.push_type.as_deref().map(str::to_owned),
                            priority: p,
                            expiration: e,
                            collapse_id: self.collapse_id.as_deref().map(str::to_owned),
                            apns_id: None,
                        };
                        Ok((submission(token, payload.clone(), headers), fields))
                    })
                    .collect())
            }
            Form::Notifications(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let (priority, expiration) = self.numbers(Some((i, item)));
                    let p = priority.priority()?;
                    let headers = PushHeaders {
                        topic: either(&item.topic, &self.topic),
                        push_type: either(&item.push_type, &self.push_type),
                        priority: p,
                        expiration: expiration.expiration()?,
                        collapse_id: either(&item.collapse_id, &self.collapse_id),
                        apns_id: item.apns_id.as_deref().map(str::to_owned),
                    };
                    let payload = Bytes::copy_from_slice(item.payload.get().as_bytes());
                    let fields = OptionFields {
                        item: Some(i),
                        own: item.options(),
                        shared,
                    };
                    Ok((submission(&item.token, payload, headers), fields))
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

impl Item<'_> {
    /// The options the notification sets itself.
    fn options(&self) -> Options {
        Options::given([
            (ApnsOption::Topic, self.topic.is_some()),
            (ApnsOption::PushType, self.push_type.is_some()),
            (ApnsOption::Priority, self.priority.is_some()),
            (ApnsOption::Expiration, self.expiration.is_some()),
            (ApnsOption::CollapseId, self.collapse_id.is_some()),
            (ApnsOption::ApnsId, self.apns_id.is_some()),
        ])
    }
}

/// A request's form, checked by [`PushBody::form`].
enum Form<'r, 'a> {
    /// One payload to each token.
    Tokens(&'r [Text<'a>], &'a RawValue),
    /// Notifications with their own payloads.
    Notifications(&'r [Item<'a>]),
}

/// Validates one item: accepted ones join the batch to commit, rejected ones keep their reason, which names the
/// option it is about by where the request gives it (`fields`).
fn take(
    intake: &Intake,
    submission: Submission,
    fields: &OptionFields,
    source: &Source,
    results: &mut Vec<ItemResult>,
    accepted: &mut Vec<crate::queue::message::Notification>,
) -> Result<(), ApiError> {
    match intake.prepare_detailed(submission, source) {
        Ok(n) => {
            results.push(ItemResult::Accepted(n.id));
            accepted.push(n);
        }
        Err(DoorRefusal {
            refusal: Refusal::Permanent(text),
            option,
        }) => results.push(ItemResult::Rejected(fields.reason(option, text))),
        Err(DoorRefusal {
            refusal: Refusal::Temporary(reason),
            ..
        }) => return Err(ApiError::unavailable(reason)),
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
    if json_but_not_an_object(body) {
        return Err(ApiError::bad_request(NOT_AN_OBJECT));
    }
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

    thread_local! {
        /// Requests built with the runtime's other tasks moved off the thread ([`build_in_place_above`]), on this
        /// thread.
        pub(super) static BUILT_IN_PLACE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A request of a few notifications is built on the spot; only one of more than [`IN_PLACE_ABOVE`] has the
    /// runtime's other tasks moved off the thread meanwhile.
    #[tokio::test]
    async fn only_large_requests_are_built_in_place() {
        use crate::outbound::settings::DeliverySettings;
        use crate::queue::message::IdGenerator;
        use crate::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
        use std::sync::Arc;
        let resolver = Arc::new(
            StaticResolver::default().with(DeliverySettings::for_tests("apps.example", 1)),
        );
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        engine.set_held(true);
        let intake = Arc::new(Intake::new(
            resolver,
            Arc::new(crate::inbound::accept::NotDurable),
            engine,
            IdGenerator::new(1),
        ));
        let source = Source {
            ip: None,
            protocol: "rest",
            batch_id: intake.next_id(),
            conn_id: intake.next_id(),
        };
        let body = |n: usize| {
            let tokens: Vec<String> = (0..n).map(|i| format!("{i:064x}")).collect();
            Bytes::from(
                serde_json::json!({"domain": "apps.example", "tokens": tokens,
                                   "payload": {"aps": {"alert": "hi"}}})
                .to_string(),
            )
        };
        let built_in_place = || BUILT_IN_PLACE.with(|n| n.get());
        let before = built_in_place();
        for n in [1, IN_PLACE_ABOVE] {
            let results = accept_batch(&intake, &body(n), &source, 1000)
                .await
                .unwrap();
            assert_eq!(results.len(), n);
            assert!(results.iter().all(|r| matches!(r, ItemResult::Accepted(_))));
        }
        assert_eq!(built_in_place(), before, "built in place");
        let results = accept_batch(&intake, &body(IN_PLACE_ABOVE + 1), &source, 1000)
            .await
            .unwrap();
        assert!(results.iter().all(|r| matches!(r, ItemResult::Accepted(_))));
        assert_eq!(built_in_place(), before + 1);
    }

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
            (r#""10""#, "string \"10\""),
            (r#""1\u0030""#, "string \"10\""),
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

    /// A body that is JSON but not an object is refused as such, not read as an object without fields.
    #[test]
    fn a_body_that_is_not_an_object_is_refused_as_such() {
        for body in [
            &b"[]"[..],
            b"[\"d\"]",
            b"\xEF\xBB\xBF[]",
            b"\"str\"",
            b"1",
            b"null",
            b"true",
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(
                err.message,
                "invalid request: the body must be a JSON object",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// A string escaping half a surrogate pair alone is refused naming the field and saying it is no valid Unicode
    /// (serde_json's own words, "unexpected end of hex escape", say neither), as the channel routes say it.
    #[test]
    fn an_unpaired_surrogate_is_refused_naming_the_field() {
        use super::super::error::UNPAIRED_SURROGATE;
        for (body, field) in [
            (
                r#"{"domain":"\ud800","tokens":["aa"],"payload":{}}"#,
                "domain",
            ),
            (
                r#"{"domain":"d","tokens":["aa"],"payload":{},"push_type":"\ud800"}"#,
                "push_type",
            ),
            (
                r#"{"domain":"d","notifications":[{"token":"aa","payload":{}},{"token":"aa","payload":{},"topic":"x\udc00"}]}"#,
                "notifications[1].topic",
            ),
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(
                err.message.starts_with(&format!(
                    "{field}: the string {UNPAIRED_SURROGATE} at line 1 column "
                )),
                "{body}: {}",
                err.message
            );
        }
        let err = parse(br#"{"domain":"d","\ud800":1}"#).unwrap_err();
        assert!(
            err.message.starts_with(&format!(
                "a member name {UNPAIRED_SURROGATE} at line 1 column "
            )),
            "{}",
            err.message
        );
    }

    /// An option given as `null` is taken as not given, at the top level and per notification (docs/api.md):
    /// many JSON clients write an absent option so.
    #[test]
    fn null_options_are_not_given() {
        let request = parse(
            br#"{"domain":"d","tokens":["aa"],"payload":{},"topic":null,"push_type":null,"priority":null,
                 "expiration":null,"collapse_id":null,"binding":null}"#,
        )
        .unwrap();
        assert_eq!(request.shared_options().0, 0);
        assert!(request.binding.is_none());
        let request = parse(
            br#"{"domain":"d","notifications":[{"token":"aa","payload":{},"apns_id":null,"topic":null,
                 "push_type":null,"priority":null,"expiration":null,"collapse_id":null}]}"#,
        )
        .unwrap();
        let item = &request.notifications.as_ref().unwrap()[0];
        assert!(item.apns_id.is_none() && item.topic.is_none() && item.push_type.is_none());
        assert!(item.priority.is_none() && item.expiration.is_none() && item.collapse_id.is_none());
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
