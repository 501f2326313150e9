//! Header validation of one HTTP/2 request, in the order listed in the [`crate::h2`] module documentation.

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{HeaderMap, Method};

use herald_apns::push::{MAX_COLLAPSE_ID_BYTES, PushType, parse_expiration, validate_apns_id};
use herald_apns::reason::Reason;
use herald_apns::token_hex::{apns_length_ok, validate_hex};

use super::KeyRing;
use super::auth::{CertAuth, TokenAuth, topic_base, topic_syntax_ok};
use crate::config::{AuthPolicy, Environment};
use crate::registry::TokenRegistry;
use crate::scenario::TokenState;

/// How a connection authenticates: by its client certificate, or (without one) by provider tokens.
pub(crate) enum ConnAuth {
    Cert(CertAuth),
    Token(TokenAuth),
}

impl ConnAuth {
    /// The authentication of a connection whose TLS handshake just finished: the certificate's when the client
    /// showed one, provider tokens (checked against `keys`, with the token age and update limits) otherwise.
    pub(crate) fn of_connection<IO>(
        tls: &tokio_rustls::server::TlsStream<IO>,
        environment: Environment,
        keys: &Arc<KeyRing>,
        token_max_age: Duration,
        token_update_interval: Duration,
    ) -> ConnAuth {
        match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(der) => ConnAuth::Cert(CertAuth::from_der(der, environment)),
            None => ConnAuth::Token(TokenAuth::new(
                keys.clone(),
                environment,
                token_max_age,
                token_update_interval,
            )),
        }
    }
}

/// A request whose headers passed every check.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Lowercase hex; empty when the record is off.
    pub token: String,
    pub topic: String,
    pub priority: u8,
    pub expiration: Option<u64>,
    /// Empty string (when present) if the record is off.
    pub collapse_id: Option<String>,
    pub push_type: Option<PushType>,
    pub payload_limit: usize,
}

/// A rejection: the reason and, for 410, the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub reason: Reason,
    pub timestamp_ms: Option<u64>,
}

impl From<Reason> for Rejection {
    fn from(reason: Reason) -> Self {
        Rejection {
            reason,
            timestamp_ms: None,
        }
    }
}

static APNS_ID: HeaderName = HeaderName::from_static("apns-id");
static APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
static APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    h.get(name).map(|v| v.as_bytes())
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

/// A header APNs reads (`apns-*`, `authorization`) given more than once (docs/apns-protocol.md#reasons
/// DuplicateHeaders: Apple's wording covers any repeated header, not only `apns-*` ones).
fn has_duplicate_header(h: &HeaderMap) -> bool {
    if h.len() == h.keys_len() {
        return false;
    }
    h.keys().any(|k| {
        (k.as_str().starts_with("apns-") || k == AUTHORIZATION)
            && h.get_all(k).iter().nth(1).is_some()
    })
}

/// Whether a topic ending in the suffix of `named` ([`PushType::from_topic_suffix`]) names that push type, so
/// that a push type without a suffix may not go to it. A suffix of two labels (`.push-type.liveactivity`,
/// `.push-type.widgets`, `.push-type.controls`, `.pushkit.fileprovider`) always does. A one-label suffix (`.voip`,
/// `.voip-ptt`, `.complication`, `.location-query`) may also end a bundle id (`com.example.voip` is a valid one, and
/// herald's client allows it), so it names its type only where the connection knows its apps' bundle ids (a
/// certificate's, a topic-specific key's: `is_bundle` says whether the topic is one of them) and the topic is not
/// one of them. A team key covers every app of its team, which the simulator does not know (`is_bundle` `None`):
/// there such a topic is taken as a bundle id.
fn names_push_type(named: PushType, is_bundle: Option<bool>) -> bool {
    let two_labels = named
        .topic_suffix()
        .is_some_and(|s| s.matches('.').count() > 1);
    two_labels || is_bundle == Some(false)
}

/// Whether `id` is an `apns-id` APNs takes: a canonical UUID in lowercase (docs/apns-protocol.md#http2, the
/// `apns-id` header), where herald-apns's [`validate_apns_id`] also lets upper case through.
pub(crate) fn is_canonical_apns_id(id: &str) -> bool {
    validate_apns_id(id).is_ok() && !id.bytes().any(|b| b.is_ascii_uppercase())
}

/// Whether an `apns-id` header is one APNs takes ([`is_canonical_apns_id`]).
pub(crate) fn apns_id_header_ok(v: &http::HeaderValue) -> bool {
    v.to_str().is_ok_and(is_canonical_apns_id)
}

/// The echoed `apns-id`, if the request had a valid one.
pub(crate) fn request_apns_id(h: &HeaderMap) -> Option<&http::HeaderValue> {
    h.get(&APNS_ID).filter(|v| apns_id_header_ok(v))
}

/// Runs checks 1–12 on the request head. `keep`: copy the token and collapse id out (only the delivery record
/// needs them).
pub(crate) fn check(
    parts: &Parts,
    auth: &mut ConnAuth,
    policy: AuthPolicy,
    registry: &TokenRegistry,
    keep: bool,
) -> Result<Checked, Rejection> {
    let h = &parts.headers;
    if has_duplicate_header(h) {
        return Err(Reason::DuplicateHeaders.into());
    }
    if let Some(id) = h.get(&APNS_ID)
        && !apns_id_header_ok(id)
    {
        return Err(Reason::BadMessageId.into());
    }
    if parts.method != Method::POST {
        return Err(Reason::MethodNotAllowed.into());
    }
    // A topic that is not printable ASCII is malformed, but BadTopic comes after authentication (step 11): it is
    // carried along (lossily) and judged there.
    let topic_header = h
        .get(&APNS_TOPIC)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let unauthenticated_ok =
        policy == AuthPolicy::AllowUnauthenticated && h.get(&AUTHORIZATION).is_none();
    let topic = match (&topic_header, &*auth) {
        (Some(t), _) => t.clone().into_owned(),
        (None, ConnAuth::Cert(c)) => match c.default_topic() {
            Some(t) => t.to_owned(),
            None => return Err(Reason::MissingTopic.into()),
        },
        (None, ConnAuth::Token(_)) if unauthenticated_ok => String::new(),
        (None, ConnAuth::Token(_)) => return Err(Reason::MissingTopic.into()),
    };
    // Apple limits only the collapse id's size, in bytes (docs/apns-protocol.md#http2-request): any value an
    // HTTP/2 header carries, UTF-8 included, is fine within 64 bytes.
    let collapse_id = match header(h, &APNS_COLLAPSE_ID) {
        Some(c) if c.len() > MAX_COLLAPSE_ID_BYTES => return Err(Reason::BadCollapseId.into()),
        Some(c) => Some(if keep {
            String::from_utf8_lossy(c).into_owned()
        } else {
            String::new()
        }),
        None => None,
    };
    let priority = match header(h, &APNS_PRIORITY) {
        None => 10,
        Some(b"10") => 10,
        Some(b"5") => 5,
        Some(b"1") => 1,
        Some(_) => return Err(Reason::BadPriority.into()),
    };
    let push_type = match header_str(h, &APNS_PUSH_TYPE) {
        Err(()) => return Err(Reason::InvalidPushType.into()),
        Ok(Some(p)) => Some(p.parse::<PushType>().map_err(|_| Reason::InvalidPushType)?),
        Ok(None) => None,
    };
    let expiration = match header_str(h, &APNS_EXPIRATION) {
        Err(()) => return Err(Reason::BadExpirationDate.into()),
        Ok(Some(e)) => Some(parse_expiration(e).map_err(|_| Reason::BadExpirationDate)?),
        Ok(None) => None,
    };
    // Push type and header values Apple calls errors together (docs/apns-protocol.md#push-types): `background`
    // at priority 10, `liveactivity` at priority 1 (it takes 5 or 10), `pushtotalk` at a priority other than 10 or
    // with an expiration other than 0. Apple names
    // no reason for them (docs/apns-protocol.md#unknowns); the simulator answers the reason of the header at
    // fault. Only values sent are judged: an absent header is left to Apple's default.
    match (push_type, header(h, &APNS_PRIORITY), expiration) {
        (Some(PushType::Background), Some(_), _) if priority == 10 => {
            return Err(Reason::BadPriority.into());
        }
        (Some(PushType::LiveActivity), Some(_), _) if priority == 1 => {
            return Err(Reason::BadPriority.into());
        }
        (Some(PushType::PushToTalk), Some(_), _) if priority != 10 => {
            return Err(Reason::BadPriority.into());
        }
        (Some(PushType::PushToTalk), _, Some(e)) if e != 0 => {
            return Err(Reason::BadExpirationDate.into());
        }
        _ => {}
    }
    // The path is all there is to it: a query makes it another path (docs/apns-protocol.md#simulator).
    if parts.uri.query().is_some() {
        return Err(Reason::BadPath.into());
    }
    let path = parts.uri.path();
    let Some(token) = path.strip_prefix("/3/device/") else {
        return Err(Reason::BadPath.into());
    };
    if token.is_empty() {
        return Err(Reason::MissingDeviceToken.into());
    }
    if token.contains('/') {
        return Err(Reason::BadPath.into());
    }
    // Hex of 32 to 100 bytes, the sizes herald sends over HTTP/2 (docs/apns-protocol.md#size-limits: the tokens APNs
    // issues are 32 bytes or longer, Live Activity push tokens 80); anything else is BadDeviceToken.
    if !validate_hex(token).is_ok_and(apns_length_ok) {
        return Err(Reason::BadDeviceToken.into());
    }

    // Authentication, then the topic against what it allows. A push type without a suffix (alert, background,
    // mdm) may not go to a topic whose suffix names another type ([`names_push_type`]); that needs the bundle ids
    // the connection knows, so it is judged here.
    let other_type = match push_type {
        Some(p) if p.topic_suffix().is_none() => PushType::from_topic_suffix(&topic),
        _ => None,
    };
    let misdirected = match auth {
        ConnAuth::Cert(c) => {
            c.status?;
            c.check_topic(&topic, push_type)?;
            other_type.is_some_and(|named| {
                names_push_type(named, Some(c.uid == topic || c.bases.contains(&topic)))
            })
        }
        ConnAuth::Token(t) => {
            let key_topics = match unauthenticated_ok {
                false => t.check(header(h, &AUTHORIZATION))?,
                true => None,
            };
            // Unauthenticated (a testing aid), a request may leave the topic out; one it names is judged.
            if topic_header.is_some() && !topic_syntax_ok(&topic) {
                return Err(Reason::BadTopic.into());
            }
            if let Some(list) = key_topics
                && !list.iter().any(|k| k == topic_base(&topic))
            {
                return Err(Reason::InvalidProviderToken.into());
            }
            other_type
                .is_some_and(|named| names_push_type(named, key_topics.map(|l| l.contains(&topic))))
        }
    };
    // The push type and the topic's suffix must agree (docs/apns-protocol.md#push-types).
    if misdirected {
        return Err(Reason::TopicDisallowed.into());
    }
    if let Some(p) = push_type
        && !topic.is_empty()
        && let Some(suffix) = p.topic_suffix()
        && !topic.ends_with(suffix)
    {
        return Err(Reason::TopicDisallowed.into());
    }

    if let Some(entry) = registry.get(token) {
        if entry.state == TokenState::Bad {
            return Err(Reason::BadDeviceToken.into());
        }
        if let Some(t) = &entry.topic
            && topic_base(t) != topic_base(&topic)
        {
            return Err(Reason::DeviceTokenNotForTopic.into());
        }
        match entry.state {
            TokenState::Unregistered => {
                return Err(Rejection {
                    reason: Reason::Unregistered,
                    timestamp_ms: Some(entry.timestamp_ms),
                });
            }
            // Every 410 carries the moment the token stopped being valid (docs/apns-protocol.md#http2-response).
            TokenState::Expired => {
                return Err(Rejection {
                    reason: Reason::ExpiredToken,
                    timestamp_ms: Some(entry.timestamp_ms),
                });
            }
            TokenState::Active | TokenState::Bad => {}
        }
    }

    // Without `apns-push-type`, a `.voip` topic still makes a VoIP push, with VoIP's limit
    // (docs/apns-protocol.md#payload-limits).
    let payload_limit = push_type
        .unwrap_or(match PushType::Voip.topic_suffix() {
            Some(voip) if topic.ends_with(voip) => PushType::Voip,
            _ => PushType::Alert,
        })
        .payload_limit(herald_apns::push::Protocol::Http2);
    Ok(Checked {
        token: match keep {
            false => String::new(),
            true if token.bytes().any(|b| b.is_ascii_uppercase()) => token.to_ascii_lowercase(),
            true => token.to_owned(),
        },
        topic,
        priority,
        expiration,
        collapse_id,
        push_type,
        payload_limit,
    })
}
