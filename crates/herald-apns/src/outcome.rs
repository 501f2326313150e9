//! How every APNs answer is treated: retried, retried after a new provider token, failed, or failed with the
//! token reported invalid. The binary statuses (docs/apns-protocol.md#binary-error-packet) and the HTTP/2 statuses and
//! reasons (docs/apns-protocol.md#http2-response, docs/apns-protocol.md#reasons) are classified here and nowhere else
//! (docs/apns-protocol.md#classification).

use std::fmt;

use crate::binary::Status;
use crate::reason::Reason;

/// What to do with a notification APNs did not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Try again later (possibly on a new connection).
    Transient,
    /// The provider token was stale: get a fresh one and try again at once.
    RefreshTokenAndRetry,
    /// Give up on this notification.
    Permanent,
    /// Give up, and record the device token as invalid.
    InvalidToken,
}

impl FailureClass {
    /// Whether the notification should be tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::Transient | FailureClass::RefreshTokenAndRetry
        )
    }

    /// Whether the device token should go to the invalid-token store.
    pub fn invalidates_token(self) -> bool {
        self == FailureClass::InvalidToken
    }

    /// The one-letter outcome code of the logs: T for retried, P for failed.
    pub fn log_code(self) -> char {
        if self.is_retryable() { 'T' } else { 'P' }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Transient => "transient",
            FailureClass::RefreshTokenAndRetry => "refresh provider token and retry",
            FailureClass::Permanent => "permanent",
            FailureClass::InvalidToken => "permanent, invalid device token",
        })
    }
}

/// Class of a binary error-packet status (docs/apns-protocol.md#binary-error-packet,
/// docs/apns-protocol.md#classification): processing error, shutdown and unknown are transient, and so is "no errors
/// encountered" (0): a packet that names a notification without saying what is wrong with it (Apple lists the code
/// but never says when it is sent; a proxy or gateway on the way is likelier) is no reason to give the notification
/// up for good. Invalid token (8) invalidates the token; everything else is permanent.
pub fn classify_binary(status: Status) -> FailureClass {
    match status {
        Status::NoErrors | Status::ProcessingError | Status::Shutdown | Status::Unknown => {
            FailureClass::Transient
        }
        Status::InvalidToken => FailureClass::InvalidToken,
        Status::MissingDeviceToken
        | Status::MissingTopic
        | Status::MissingPayload
        | Status::InvalidTokenSize
        | Status::InvalidTopicSize
        | Status::InvalidPayloadSize
        | Status::ProtocolError => FailureClass::Permanent,
    }
}

/// Class of a known HTTP/2 reason (docs/apns-protocol.md#reasons and Apple's retry guidance there).
///
/// Two 4xx reasons are transient on purpose: `IdleTimeout` (the server timed the connection out, nothing is
/// wrong with the notification) and `UnrelatedKeyIdInToken` (Apple's remedy is a new connection).
pub fn classify_reason(reason: Reason) -> FailureClass {
    use FailureClass::*;
    match reason {
        Reason::BadDeviceToken | Reason::ExpiredToken | Reason::Unregistered => InvalidToken,
        Reason::ExpiredProviderToken => RefreshTokenAndRetry,
        Reason::IdleTimeout
        | Reason::UnrelatedKeyIdInToken
        | Reason::TooManyProviderTokenUpdates
        | Reason::TooManyRequests
        | Reason::InternalServerError
        | Reason::ServiceUnavailable
        | Reason::Shutdown => Transient,
        Reason::BadCollapseId
        | Reason::BadExpirationDate
        | Reason::BadMessageId
        | Reason::BadPriority
        | Reason::BadTopic
        | Reason::DeviceTokenNotForTopic
        | Reason::DuplicateHeaders
        | Reason::InvalidPushType
        | Reason::MissingDeviceToken
        | Reason::MissingTopic
        | Reason::PayloadEmpty
        | Reason::TopicDisallowed
        | Reason::BadCertificate
        | Reason::BadCertificateEnvironment
        | Reason::Forbidden
        | Reason::InvalidProviderToken
        | Reason::MissingProviderToken
        | Reason::BadEnvironmentKeyIdInToken
        | Reason::BadPath
        | Reason::MethodNotAllowed
        | Reason::PayloadTooLarge => Permanent,
    }
}

/// Class of an HTTP/2 response other than 200. A known reason decides (Apple's status for a reason has
/// changed over time, so the reason string wins, docs/apns-protocol.md#reasons); otherwise the status does: 410
/// invalidates the token, 408 and 429 are transient, other 4xx permanent, 5xx transient. Statuses outside 4xx/5xx are
/// not APNs answers to a push and are treated as transient.
pub fn classify_http(status: u16, reason: Option<&str>) -> FailureClass {
    if let Some(r) = reason.and_then(|r| r.parse::<Reason>().ok()) {
        return classify_reason(r);
    }
    match status {
        410 => FailureClass::InvalidToken,
        408 | 429 => FailureClass::Transient,
        400..=499 => FailureClass::Permanent,
        _ => FailureClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureClass::*;

    #[test]
    fn binary_statuses() {
        // docs/apns-protocol.md#binary-error-packet, docs/apns-protocol.md#classification.
        let table: [(u8, FailureClass); 12] = [
            (0, Transient),
            (1, Transient),
            (2, Permanent),
            (3, Permanent),
            (4, Permanent),
            (5, Permanent),
            (6, Permanent),
            (7, Permanent),
            (8, InvalidToken),
            (10, Transient),
            (128, Permanent),
            (255, Transient),
        ];
        for (code, class) in table {
            let s = Status::from_code(code).unwrap();
            assert_eq!(classify_binary(s), class, "status {code}");
        }
    }

    #[test]
    fn every_http_reason() {
        // docs/apns-protocol.md#reasons, all 32 reasons; the status given alongside is the one in Apple's table.
        let table: [(&str, FailureClass); 32] = [
            ("BadCollapseId", Permanent),
            ("BadDeviceToken", InvalidToken),
            ("BadExpirationDate", Permanent),
            ("BadMessageId", Permanent),
            ("BadPriority", Permanent),
            ("BadTopic", Permanent),
            ("DeviceTokenNotForTopic", Permanent),
            ("DuplicateHeaders", Permanent),
            ("IdleTimeout", Transient),
            ("InvalidPushType", Permanent),
            ("MissingDeviceToken", Permanent),
            ("MissingTopic", Permanent),
            ("PayloadEmpty", Permanent),
            ("TopicDisallowed", Permanent),
            ("BadCertificate", Permanent),
            ("BadCertificateEnvironment", Permanent),
            ("ExpiredProviderToken", RefreshTokenAndRetry),
            ("Forbidden", Permanent),
            ("InvalidProviderToken", Permanent),
            ("MissingProviderToken", Permanent),
            ("UnrelatedKeyIdInToken", Transient),
            ("BadEnvironmentKeyIdInToken", Permanent),
            ("BadPath", Permanent),
            ("MethodNotAllowed", Permanent),
            ("ExpiredToken", InvalidToken),
            ("Unregistered", InvalidToken),
            ("PayloadTooLarge", Permanent),
            ("TooManyProviderTokenUpdates", Transient),
            ("TooManyRequests", Transient),
            ("InternalServerError", Transient),
            ("ServiceUnavailable", Transient),
            ("Shutdown", Transient),
        ];
        for ((name, class), reason) in table.into_iter().zip(Reason::ALL) {
            assert_eq!(reason.as_str(), name);
            assert_eq!(classify_http(reason.status(), Some(name)), class, "{name}");
            assert_eq!(classify_reason(reason), class, "{name}");
        }
    }

    #[test]
    fn reason_wins_over_status() {
        // docs/apns-protocol.md#reasons history: ExpiredToken was once listed with 400.
        assert_eq!(classify_http(400, Some("ExpiredToken")), InvalidToken);
    }

    #[test]
    fn unknown_reasons_fall_back_to_the_status() {
        assert_eq!(classify_http(410, Some("SomethingNew")), InvalidToken);
        assert_eq!(classify_http(400, Some("SomethingNew")), Permanent);
        assert_eq!(classify_http(403, None), Permanent);
        assert_eq!(classify_http(404, None), Permanent);
        assert_eq!(classify_http(405, None), Permanent);
        assert_eq!(classify_http(413, None), Permanent);
        assert_eq!(classify_http(408, None), Transient);
        assert_eq!(classify_http(429, None), Transient);
        assert_eq!(classify_http(500, None), Transient);
        assert_eq!(classify_http(502, Some("x")), Transient);
        assert_eq!(classify_http(503, None), Transient);
        assert_eq!(classify_http(599, None), Transient);
    }

    #[test]
    fn helpers() {
        assert!(Transient.is_retryable() && RefreshTokenAndRetry.is_retryable());
        assert!(!Permanent.is_retryable() && !InvalidToken.is_retryable());
        assert!(InvalidToken.invalidates_token() && !Permanent.invalidates_token());
        assert_eq!(Transient.log_code(), 'T');
        assert_eq!(InvalidToken.log_code(), 'P');
    }
}
