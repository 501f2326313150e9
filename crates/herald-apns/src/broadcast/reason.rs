//! The reasons of the broadcast and channel management error table (docs/apns-protocol.md §6.2), with the status
//! APNs sends for each and their class: temporary (retried) or permanent. A broadcast has no device token, so no
//! reason invalidates a token; a deleted or unknown channel (`ChannelNotRegistered`) is permanent.

use std::fmt;
use std::str::FromStr;

use crate::client::UNRECOGNIZED_REASON;
use crate::outcome::FailureClass;

/// One reason string of the broadcast and channel management APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastReason {
    FeatureNotEnabled,
    MissingChannelId,
    BadChannelId,
    ChannelNotRegistered,
    BadRequestParams,
    BadRequestPayload,
    PayloadEmpty,
    BadMessageId,
    MissingPushType,
    InvalidPushType,
    CannotCreateChannelConfig,
    BadExpirationDate,
    TopicDisallowed,
    BadPriority,
    MissingChannelQueueSize,
    BadCertificate,
    BadCertificateEnvironment,
    TopicMismatch,
    MissingProviderToken,
    ExpiredProviderToken,
    InvalidProviderToken,
    BadPath,
    MethodNotAllowed,
    PayloadTooLarge,
    TooManyRequests,
    TooManyProviderTokenUpdates,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
}

/// A reason string that is not one of the broadcast reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown APNs broadcast reason {0:?}")]
pub struct UnknownBroadcastReason(pub String);

impl BroadcastReason {
    /// Every reason, in the order of docs/apns-protocol.md §6.2.
    pub const ALL: [BroadcastReason; 29] = {
        use BroadcastReason::*;
        [
            FeatureNotEnabled,
            MissingChannelId,
            BadChannelId,
            ChannelNotRegistered,
            BadRequestParams,
            BadRequestPayload,
            PayloadEmpty,
            BadMessageId,
            MissingPushType,
            InvalidPushType,
            CannotCreateChannelConfig,
            BadExpirationDate,
            TopicDisallowed,
            BadPriority,
            MissingChannelQueueSize,
            BadCertificate,
            BadCertificateEnvironment,
            TopicMismatch,
            MissingProviderToken,
            ExpiredProviderToken,
            InvalidProviderToken,
            BadPath,
            MethodNotAllowed,
            PayloadTooLarge,
            TooManyRequests,
            TooManyProviderTokenUpdates,
            InternalServerError,
            ServiceUnavailable,
            Shutdown,
        ]
    };

    /// The exact reason string of the JSON body.
    pub fn as_str(self) -> &'static str {
        use BroadcastReason::*;
        match self {
            FeatureNotEnabled => "FeatureNotEnabled",
            MissingChannelId => "MissingChannelId",
            BadChannelId => "BadChannelId",
            ChannelNotRegistered => "ChannelNotRegistered",
            BadRequestParams => "BadRequestParams",
            BadRequestPayload => "BadRequestPayload",
            PayloadEmpty => "PayloadEmpty",
            BadMessageId => "BadMessageId",
            MissingPushType => "MissingPushType",
            InvalidPushType => "InvalidPushType",
            CannotCreateChannelConfig => "CannotCreateChannelConfig",
            BadExpirationDate => "BadExpirationDate",
            TopicDisallowed => "TopicDisallowed",
            BadPriority => "BadPriority",
            MissingChannelQueueSize => "MissingChannelQueueSize",
            BadCertificate => "BadCertificate",
            BadCertificateEnvironment => "BadCertificateEnvironment",
            TopicMismatch => "TopicMismatch",
            MissingProviderToken => "MissingProviderToken",
            ExpiredProviderToken => "ExpiredProviderToken",
            InvalidProviderToken => "InvalidProviderToken",
            BadPath => "BadPath",
            MethodNotAllowed => "MethodNotAllowed",
            PayloadTooLarge => "PayloadTooLarge",
            TooManyRequests => "TooManyRequests",
            TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            InternalServerError => "InternalServerError",
            ServiceUnavailable => "ServiceUnavailable",
            Shutdown => "Shutdown",
        }
    }

    /// The HTTP status APNs sends with this reason.
    ///
    /// Apple's table lists no status for `ChannelNotRegistered` beyond the 400 group and none at all for
    /// `MissingChannelQueueSize` (seen answered to a missing storage policy); herald and its simulator use 400
    /// for both (the decision is recorded in docs/apns-protocol.md §6.2).
    pub fn status(self) -> u16 {
        use BroadcastReason::*;
        match self {
            FeatureNotEnabled
            | MissingChannelId
            | BadChannelId
            | ChannelNotRegistered
            | BadRequestParams
            | BadRequestPayload
            | PayloadEmpty
            | BadMessageId
            | MissingPushType
            | InvalidPushType
            | CannotCreateChannelConfig
            | BadExpirationDate
            | TopicDisallowed
            | BadPriority
            | MissingChannelQueueSize => 400,
            BadCertificate
            | BadCertificateEnvironment
            | TopicMismatch
            | MissingProviderToken
            | ExpiredProviderToken
            | InvalidProviderToken => 403,
            BadPath => 404,
            MethodNotAllowed => 405,
            PayloadTooLarge => 413,
            TooManyRequests | TooManyProviderTokenUpdates => 429,
            InternalServerError => 500,
            ServiceUnavailable | Shutdown => 503,
        }
    }

    /// What to do with a broadcast (or channel operation) that got this answer.
    ///
    /// Temporary: the 429s, 500 and 503 (try later), and `ExpiredProviderToken` (new token, then at once).
    /// Everything else names a fault in the request, the channel or the credentials and is permanent; a
    /// broadcast has no device token, so nothing is [`FailureClass::InvalidToken`].
    pub fn class(self) -> FailureClass {
        use BroadcastReason::*;
        match self {
            ExpiredProviderToken => FailureClass::RefreshTokenAndRetry,
            TooManyRequests
            | TooManyProviderTokenUpdates
            | InternalServerError
            | ServiceUnavailable
            | Shutdown => FailureClass::Transient,
            FeatureNotEnabled
            | MissingChannelId
            | BadChannelId
            | ChannelNotRegistered
            | BadRequestParams
            | BadRequestPayload
            | PayloadEmpty
            | BadMessageId
            | MissingPushType
            | InvalidPushType
            | CannotCreateChannelConfig
            | BadExpirationDate
            | TopicDisallowed
            | BadPriority
            | MissingChannelQueueSize
            | BadCertificate
            | BadCertificateEnvironment
            | TopicMismatch
            | MissingProviderToken
            | InvalidProviderToken
            | BadPath
            | MethodNotAllowed
            | PayloadTooLarge => FailureClass::Permanent,
        }
    }
}

impl fmt::Display for BroadcastReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BroadcastReason {
    type Err = UnknownBroadcastReason;
    /// Exact, case-sensitive match.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BroadcastReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownBroadcastReason(s.to_owned()))
    }
}

/// The reason as counters name it: one of the broadcast reasons, else [`UNRECOGNIZED_REASON`] (as
/// [`crate::client::Rejection::label`] does for pushes). The text a host answered may be anything (a proxy's page, a
/// made-up reason): counting under it would let a misbehaving host add a series per answer; logs keep the text.
pub fn reason_label(reason: &str) -> &'static str {
    reason
        .parse::<BroadcastReason>()
        .map_or(UNRECOGNIZED_REASON, BroadcastReason::as_str)
}

/// Class of a broadcast or channel-management answer other than success: a known reason decides, otherwise
/// the status (408 and 429 temporary, other 4xx permanent, 5xx and anything else temporary). Unlike device
/// pushes, 410 does not invalidate anything.
pub fn classify_broadcast(status: u16, reason: Option<&str>) -> FailureClass {
    if let Some(r) = reason.and_then(|r| r.parse::<BroadcastReason>().ok()) {
        return r.class();
    }
    match status {
        408 | 429 => FailureClass::Transient,
        400..=499 => FailureClass::Permanent,
        _ => FailureClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureClass::*;

    /// docs/apns-protocol.md §6.2, reason by reason.
    const TABLE: [(&str, u16, FailureClass); 29] = [
        ("FeatureNotEnabled", 400, Permanent),
        ("MissingChannelId", 400, Permanent),
        ("BadChannelId", 400, Permanent),
        ("ChannelNotRegistered", 400, Permanent),
        ("BadRequestParams", 400, Permanent),
        ("BadRequestPayload", 400, Permanent),
        ("PayloadEmpty", 400, Permanent),
        ("BadMessageId", 400, Permanent),
        ("MissingPushType", 400, Permanent),
        ("InvalidPushType", 400, Permanent),
        ("CannotCreateChannelConfig", 400, Permanent),
        ("BadExpirationDate", 400, Permanent),
        ("TopicDisallowed", 400, Permanent),
        ("BadPriority", 400, Permanent),
        ("MissingChannelQueueSize", 400, Permanent),
        ("BadCertificate", 403, Permanent),
        ("BadCertificateEnvironment", 403, Permanent),
        ("TopicMismatch", 403, Permanent),
        ("MissingProviderToken", 403, Permanent),
        ("ExpiredProviderToken", 403, RefreshTokenAndRetry),
        ("InvalidProviderToken", 403, Permanent),
        ("BadPath", 404, Permanent),
        ("MethodNotAllowed", 405, Permanent),
        ("PayloadTooLarge", 413, Permanent),
        ("TooManyRequests", 429, Transient),
        ("TooManyProviderTokenUpdates", 429, Transient),
        ("InternalServerError", 500, Transient),
        ("ServiceUnavailable", 503, Transient),
        ("Shutdown", 503, Transient),
    ];

    #[test]
    fn every_reason_has_its_string_status_and_class() {
        for ((name, status, class), r) in TABLE.iter().zip(BroadcastReason::ALL) {
            assert_eq!(r.as_str(), *name);
            assert_eq!(r.status(), *status, "{name}");
            assert_eq!(r.class(), *class, "{name}");
            assert_eq!(name.parse::<BroadcastReason>().ok(), Some(r));
            assert_eq!(classify_broadcast(*status, Some(name)), *class);
        }
        assert!("channelnotregistered".parse::<BroadcastReason>().is_err());
    }

    /// Counters take a known reason as it is and any other text as one label.
    #[test]
    fn only_known_reasons_label_a_counter() {
        for r in BroadcastReason::ALL {
            assert_eq!(reason_label(r.as_str()), r.as_str());
        }
        for other in [
            "<html><body>Bad Gateway</body></html>",
            "SomethingNew",
            "-",
            "",
        ] {
            assert_eq!(reason_label(other), UNRECOGNIZED_REASON, "{other:?}");
        }
    }

    #[test]
    fn unknown_reasons_fall_back_to_the_status() {
        assert_eq!(classify_broadcast(400, Some("SomethingNew")), Permanent);
        assert_eq!(classify_broadcast(410, None), Permanent);
        assert_eq!(classify_broadcast(429, None), Transient);
        assert_eq!(classify_broadcast(502, None), Transient);
        assert!(!classify_broadcast(400, Some("ChannelNotRegistered")).is_retryable());
    }
}
