//! HTTP/2 error reasons: the 32 reason strings APNs returns with their HTTP status, and the JSON error body
//! (`{"reason":…}` plus `timestamp` on 410) in both directions (docs/apns-protocol.md#http2-response,
//! docs/apns-protocol.md#reasons).

use std::fmt;
use std::str::FromStr;

/// One reason string of the HTTP/2 provider API (docs/apns-protocol.md#reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    BadEnvironmentKeyIdInToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
}

/// A reason string that is not one of the 32 known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown APNs reason {0:?}")]
pub struct UnknownReason(pub String);

impl Reason {
    /// Every reason, in the order of docs/apns-protocol.md#reasons.
    pub const ALL: [Reason; 32] = [
        Reason::BadCollapseId,
        Reason::BadDeviceToken,
        Reason::BadExpirationDate,
        Reason::BadMessageId,
        Reason::BadPriority,
        Reason::BadTopic,
        Reason::DeviceTokenNotForTopic,
        Reason::DuplicateHeaders,
        Reason::IdleTimeout,
        Reason::InvalidPushType,
        Reason::MissingDeviceToken,
        Reason::MissingTopic,
        Reason::PayloadEmpty,
        Reason::TopicDisallowed,
        Reason::BadCertificate,
        Reason::BadCertificateEnvironment,
        Reason::ExpiredProviderToken,
        Reason::Forbidden,
        Reason::InvalidProviderToken,
        Reason::MissingProviderToken,
        Reason::UnrelatedKeyIdInToken,
        Reason::BadEnvironmentKeyIdInToken,
        Reason::BadPath,
        Reason::MethodNotAllowed,
        Reason::ExpiredToken,
        Reason::Unregistered,
        Reason::PayloadTooLarge,
        Reason::TooManyProviderTokenUpdates,
        Reason::TooManyRequests,
        Reason::InternalServerError,
        Reason::ServiceUnavailable,
        Reason::Shutdown,
    ];

    /// The exact reason string as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadCollapseId => "BadCollapseId",
            Reason::BadDeviceToken => "BadDeviceToken",
            Reason::BadExpirationDate => "BadExpirationDate",
            Reason::BadMessageId => "BadMessageId",
            Reason::BadPriority => "BadPriority",
            Reason::BadTopic => "BadTopic",
            Reason::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            Reason::DuplicateHeaders => "DuplicateHeaders",
            Reason::IdleTimeout => "IdleTimeout",
            Reason::InvalidPushType => "InvalidPushType",
            Reason::MissingDeviceToken => "MissingDeviceToken",
            Reason::MissingTopic => "MissingTopic",
            Reason::PayloadEmpty => "PayloadEmpty",
            Reason::TopicDisallowed => "TopicDisallowed",
            Reason::BadCertificate => "BadCertificate",
            Reason::BadCertificateEnvironment => "BadCertificateEnvironment",
            Reason::ExpiredProviderToken => "ExpiredProviderToken",
            Reason::Forbidden => "Forbidden",
            Reason::InvalidProviderToken => "InvalidProviderToken",
            Reason::MissingProviderToken => "MissingProviderToken",
            Reason::UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            Reason::BadEnvironmentKeyIdInToken => "BadEnvironmentKeyIdInToken",
            Reason::BadPath => "BadPath",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::ExpiredToken => "ExpiredToken",
            Reason::Unregistered => "Unregistered",
            Reason::PayloadTooLarge => "PayloadTooLarge",
            Reason::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalServerError => "InternalServerError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Shutdown => "Shutdown",
        }
    }

    /// The HTTP status APNs sends with this reason (docs/apns-protocol.md#reasons).
    pub fn status(self) -> u16 {
        use Reason::*;
        match self {
            BadCollapseId
            | BadDeviceToken
            | BadExpirationDate
            | BadMessageId
            | BadPriority
            | BadTopic
            | DeviceTokenNotForTopic
            | DuplicateHeaders
            | IdleTimeout
            | InvalidPushType
            | MissingDeviceToken
            | MissingTopic
            | PayloadEmpty
            | TopicDisallowed => 400,
            BadCertificate
            | BadCertificateEnvironment
            | ExpiredProviderToken
            | Forbidden
            | InvalidProviderToken
            | MissingProviderToken
            | UnrelatedKeyIdInToken
            | BadEnvironmentKeyIdInToken => 403,
            BadPath => 404,
            MethodNotAllowed => 405,
            ExpiredToken | Unregistered => 410,
            PayloadTooLarge => 413,
            TooManyProviderTokenUpdates | TooManyRequests => 429,
            InternalServerError => 500,
            ServiceUnavailable | Shutdown => 503,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = UnknownReason;
    /// Exact, case-sensitive match on the reason string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// The JSON body of an HTTP/2 error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The reason text as sent; unknown strings are kept verbatim.
    pub reason: String,
    /// Milliseconds since the epoch at which APNs found the token invalid (410 only).
    pub timestamp: Option<u64>,
}

impl ErrorBody {
    /// The reason as a known [`Reason`], if it is one.
    pub fn known_reason(&self) -> Option<Reason> {
        self.reason.parse().ok()
    }
}

/// Why an error body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ErrorBodyError {
    #[error("APNs error body is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("APNs error body has no string \"reason\"")]
    MissingReason,
}

/// Renders `{"reason":"…"}`, adding `"timestamp"` only for reasons sent with status 410
/// (docs/apns-protocol.md#http2-response).
pub fn error_body(reason: Reason, timestamp_ms: Option<u64>) -> String {
    match timestamp_ms {
        Some(ts) if reason.status() == 410 => {
            format!("{{\"reason\":\"{}\",\"timestamp\":{ts}}}", reason.as_str())
        }
        _ => format!("{{\"reason\":\"{}\"}}", reason.as_str()),
    }
}

/// What an error body's two fields hold, each read on its own ([`read_error_body`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `reason`, when it is a string.
    pub reason: Option<String>,
    /// `timestamp` in milliseconds since the epoch, when it is one ([`read_error_body`] says which forms count).
    pub timestamp: Option<u64>,
}

/// Reads `reason` and `timestamp` out of an error body, each independently of the other and of every other field
/// (docs/apns-protocol.md#http2-response): a `timestamp` herald cannot read leaves the `reason`, and a body without
/// a string `reason` still gives its `timestamp`, so that a 410 keeps the time APNs gave. Other fields are skipped
/// unread, whatever they hold, and so is anything after the object. A `timestamp` is taken as a non-negative
/// integer, a float with no fraction (as some servers print), or either of those as a string (`"1700000000000"`).
/// Both are `None` for a body that does not begin with a JSON object.
pub fn read_error_body(body: &[u8]) -> ErrorFields {
    read_fields(body).unwrap_or_default()
}

/// Reads an error body whose `reason` is a string ([`read_error_body`]); unknown reason strings are kept as text,
/// other fields are ignored, and a `timestamp` herald cannot read is left out rather than failing the body.
pub fn parse_error_body(body: &[u8]) -> Result<ErrorBody, ErrorBodyError> {
    let fields = read_fields(body)?;
    let reason = fields.reason.ok_or(ErrorBodyError::MissingReason)?;
    Ok(ErrorBody {
        reason,
        timestamp: fields.timestamp,
    })
}

/// The body's leading JSON object as [`ErrorFields`]; for a repeated key the last one counts, as in a serde_json
/// `Value`.
fn read_fields(body: &[u8]) -> Result<ErrorFields, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::Deserialize::deserialize(&mut de).map(|RawFields(fields)| fields)
}

/// An error body's root object, read as [`ErrorFields`].
struct RawFields(ErrorFields);

impl<'de> serde::Deserialize<'de> for RawFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawFields, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RawFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields, A::Error> {
                let mut fields = ErrorFields::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "reason" => {
                            fields.reason = match map.next_value::<Scalar>()? {
                                Scalar::Text(s) => Some(s),
                                _ => None,
                            };
                        }
                        "timestamp" => {
                            fields.timestamp = map.next_value::<Scalar>()?.millis();
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(RawFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// The value of `reason` or `timestamp`: text or a number; anything else is skipped unread.
enum Scalar {
    Text(String),
    Unsigned(u64),
    Float(f64),
    Other,
}

impl Scalar {
    /// Milliseconds since the epoch: a non-negative integer, or a float with no fraction, as a number or as text.
    fn millis(&self) -> Option<u64> {
        match self {
            Scalar::Unsigned(n) => Some(*n),
            Scalar::Float(f) => whole_number(*f),
            Scalar::Text(text) => {
                let text = text.trim();
                if !text.is_empty() && text.bytes().all(|c| c.is_ascii_digit()) {
                    text.parse().ok()
                } else {
                    text.parse::<f64>().ok().and_then(whole_number)
                }
            }
            Scalar::Other => None,
        }
    }
}

/// A finite float with no fraction, within `u64` and not negative, as an integer.
fn whole_number(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::Unsigned))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The reason carried in a GOAWAY frame's debug data: the `reason` of a JSON body when there is one,
/// otherwise the data as trimmed text (APNs has been seen sending plain text there,
/// docs/apns-protocol.md#http2-connection). `None` for empty or non-UTF-8 data.
pub fn goaway_reason(debug_data: &[u8]) -> Option<String> {
    if let Ok(body) = parse_error_body(debug_data) {
        return Some(body.reason);
    }
    let text = std::str::from_utf8(debug_data).ok()?.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/apns-protocol.md#reasons, row by row.
    const TABLE: [(&str, u16); 32] = [
        ("BadCollapseId", 400),
        ("BadDeviceToken", 400),
        ("BadExpirationDate", 400),
        ("BadMessageId", 400),
        ("BadPriority", 400),
        ("BadTopic", 400),
        ("DeviceTokenNotForTopic", 400),
        ("DuplicateHeaders", 400),
        ("IdleTimeout", 400),
        ("InvalidPushType", 400),
        ("MissingDeviceToken", 400),
        ("MissingTopic", 400),
        ("PayloadEmpty", 400),
        ("TopicDisallowed", 400),
        ("BadCertificate", 403),
        ("BadCertificateEnvironment", 403),
        ("ExpiredProviderToken", 403),
        ("Forbidden", 403),
        ("InvalidProviderToken", 403),
        ("MissingProviderToken", 403),
        ("UnrelatedKeyIdInToken", 403),
        ("BadEnvironmentKeyIdInToken", 403),
        ("BadPath", 404),
        ("MethodNotAllowed", 405),
        ("ExpiredToken", 410),
        ("Unregistered", 410),
        ("PayloadTooLarge", 413),
        ("TooManyProviderTokenUpdates", 429),
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
        ("Shutdown", 503),
    ];

    #[test]
    fn every_reason_has_its_string_and_status() {
        for ((name, status), r) in TABLE.iter().zip(Reason::ALL) {
            assert_eq!(r.as_str(), *name);
            assert_eq!(r.status(), *status, "{name}");
            assert_eq!(name.parse::<Reason>().unwrap(), r);
        }
        assert!("badtopic".parse::<Reason>().is_err());
        assert!("Unknown".parse::<Reason>().is_err());
    }

    #[test]
    fn error_bodies() {
        // docs/apns-protocol.md#http2-response: timestamp only with 410.
        assert_eq!(
            error_body(Reason::BadTopic, None),
            r#"{"reason":"BadTopic"}"#
        );
        assert_eq!(
            error_body(Reason::BadTopic, Some(5)),
            r#"{"reason":"BadTopic"}"#
        );
        assert_eq!(
            error_body(Reason::Unregistered, Some(1_700_000_000_123)),
            r#"{"reason":"Unregistered","timestamp":1700000000123}"#
        );
        for r in Reason::ALL {
            let body = parse_error_body(error_body(r, Some(7)).as_bytes()).unwrap();
            assert_eq!(body.known_reason(), Some(r));
            assert_eq!(body.timestamp, (r.status() == 410).then_some(7));
        }
    }

    #[test]
    fn parsing_keeps_unknown_reasons_and_rejects_garbage() {
        let b = parse_error_body(br#"{"reason":"SomethingNew","extra":1}"#).unwrap();
        assert_eq!(b.reason, "SomethingNew");
        assert_eq!(b.known_reason(), None);
        let b = parse_error_body(br#"{"reason":"Unregistered","timestamp":1.7e12}"#).unwrap();
        assert_eq!(b.timestamp, Some(1_700_000_000_000));
        assert!(matches!(
            parse_error_body(b"not json"),
            Err(ErrorBodyError::Json(_))
        ));
        assert!(matches!(
            parse_error_body(br#"{"reason":3}"#),
            Err(ErrorBodyError::MissingReason)
        ));
        assert!(matches!(
            parse_error_body(br#"{}"#),
            Err(ErrorBodyError::MissingReason)
        ));
        assert!(matches!(
            parse_error_body(b"[\"Unregistered\"]"),
            Err(ErrorBodyError::Json(_))
        ));
    }

    /// docs/apns-protocol.md#http2-response: `reason` and `timestamp` are read each on its own, so that neither an
    /// odd `timestamp` nor an odd other field loses the `reason`, and a 410's time survives a `timestamp` written
    /// as text.
    #[test]
    fn reason_and_timestamp_are_read_independently() {
        let body = |b: &[u8]| parse_error_body(b).map(|b| (b.reason, b.timestamp)).ok();
        let unregistered = |ts| Some(("Unregistered".to_owned(), ts));
        // A timestamp as a numeric string, integral or a float with no fraction.
        assert_eq!(
            body(br#"{"reason":"Unregistered","timestamp":"1700000000123"}"#),
            unregistered(Some(1_700_000_000_123))
        );
        assert_eq!(
            body(br#"{"timestamp":" 1.7e12 ","reason":"Unregistered"}"#),
            unregistered(Some(1_700_000_000_000))
        );
        // A timestamp herald cannot read leaves the reason, without a time.
        for odd in [
            &br#"{"reason":"Unregistered","timestamp":-1}"#[..],
            br#"{"reason":"Unregistered","timestamp":"x"}"#,
            br#"{"reason":"Unregistered","timestamp":"-5"}"#,
            br#"{"reason":"Unregistered","timestamp":1.5}"#,
            br#"{"reason":"Unregistered","timestamp":{"ms":1}}"#,
            br#"{"reason":"Unregistered","timestamp":[1]}"#,
            br#"{"reason":"Unregistered","timestamp":true}"#,
            br#"{"reason":"Unregistered","timestamp":null}"#,
        ] {
            assert_eq!(
                body(odd),
                unregistered(None),
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
        // Odd other fields, and anything after the object, change nothing.
        for extra in [
            &br#"{"reason":"Unregistered","timestamp":1700000000123,"x":1e400}"#[..],
            br#"{"detail":{"a":[1,{"b":null}]},"reason":"Unregistered","timestamp":1700000000123}"#,
            br#"{"reason":"Unregistered","timestamp":1700000000123} trailing"#,
            br#"{"reason":"BadTopic","reason":"Unregistered","timestamp":1700000000123}"#,
        ] {
            assert_eq!(
                body(extra),
                unregistered(Some(1_700_000_000_123)),
                "{}",
                String::from_utf8_lossy(extra)
            );
        }
        // Without a string reason, the timestamp is still read.
        assert_eq!(
            read_error_body(br#"{"reason":410,"timestamp":"1700000000123"}"#),
            ErrorFields {
                reason: None,
                timestamp: Some(1_700_000_000_123)
            }
        );
        assert_eq!(read_error_body(b"Unregistered"), ErrorFields::default());
        assert_eq!(read_error_body(b""), ErrorFields::default());
    }

    #[test]
    fn goaway_debug_data() {
        assert_eq!(
            goaway_reason(br#"{"reason":"Shutdown"}"#).as_deref(),
            Some("Shutdown")
        );
        assert_eq!(
            goaway_reason(b"Maximum active streams violated for this endpoint.\n").as_deref(),
            Some("Maximum active streams violated for this endpoint.")
        );
        assert_eq!(goaway_reason(b""), None);
        assert_eq!(goaway_reason(&[0xff, 0xfe]), None);
    }
}
