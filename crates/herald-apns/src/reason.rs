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
    #[error("APNs error body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("APNs error body has no string \"reason\"")]
    MissingReason,
    #[error("APNs error body \"timestamp\" is not a non-negative integer")]
    BadTimestamp,
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

/// Reads an error body. Unknown reason strings are kept as text; extra fields are ignored. A `timestamp`
/// that is a float with no fraction (as some servers print) is accepted.
pub fn parse_error_body(body: &[u8]) -> Result<ErrorBody, ErrorBodyError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let reason = value
        .get("reason")
        .and_then(|r| r.as_str())
        .ok_or(ErrorBodyError::MissingReason)?
        .to_owned();
    let timestamp = match value.get("timestamp") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(timestamp_value(v).ok_or(ErrorBodyError::BadTimestamp)?),
    };
    Ok(ErrorBody { reason, timestamp })
}

fn timestamp_value(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
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
            parse_error_body(br#"{"reason":"Unregistered","timestamp":-1}"#),
            Err(ErrorBodyError::BadTimestamp)
        ));
        assert!(matches!(
            parse_error_body(br#"{"reason":"Unregistered","timestamp":"x"}"#),
            Err(ErrorBodyError::BadTimestamp)
        ));
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
