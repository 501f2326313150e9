//! One call that checks everything about a notification before it is accepted: device token format for the
//! protocol, push type against the route's authentication, topic against push type, collapse id, apns-id,
//! expiration and payload (docs/apns-protocol.md#provider-checks, docs/apns-protocol.md#http2-request,
//! docs/apns-protocol.md#binary-command-2). The accept layer uses it to refuse a bad notification at the door with a
//! reason naming the field.

use crate::payload::{self, PayloadError};
use crate::push::{self, Priority, Protocol, PushError, PushType};
use crate::token_hex::{DeviceToken, TokenError};

/// A notification's APNs request headers as a sender gave them, before any check: what every inbound door (an
/// MCMT push part, a REST item, a `herald send` line) reads. Checked by [`validate_notification`] through
/// [`NotificationParts`]; a valid notification then travels as one [`PushRequest`](crate::client::PushRequest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushHeaders {
    /// `apns-topic`; `None` leaves it to the domain's topic or the certificate's.
    pub topic: Option<String>,
    /// `apns-push-type` as given; `None`: inferred from the payload.
    pub push_type: Option<String>,
    /// `apns-priority` as given (5, 10, or 1 for some types); `None`: the push type's default.
    pub priority: Option<u8>,
    /// `apns-expiration`, epoch seconds (0 = deliver once or drop); `None`: the domain's `apn_expiry`.
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    /// `apns-id` as given; `None`: herald assigns one.
    pub apns_id: Option<String>,
}

/// How the connections of a notification's route prove who the provider is (docs/apns-protocol.md#authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// Provider tokens (docs/apns-protocol.md#provider-tokens): an HTTP/2 route whose domain has a signing key.
    Token,
    /// A TLS client certificate alone (docs/apns-protocol.md#certificates): every binary route, and an HTTP/2
    /// route whose domain has no signing key.
    Certificate,
}

/// A notification as the door checks it: the sender's token and [`PushHeaders`], with what herald resolved for
/// the headers left out (push type, priority, the domain's topic) and the protocol and authentication of the
/// route.
#[derive(Debug, Clone, Copy)]
pub struct NotificationParts<'a> {
    /// Device token as hex.
    pub token: &'a str,
    /// The request headers as given; their expiration, collapse id, apns-id and topic are checked.
    pub headers: &'a PushHeaders,
    /// The topic checked when `headers` names none (the domain's, with the push type's suffix); `None` lets a
    /// certificate supply it, which only an HTTP/2 certificate route can, and only for a push type without a
    /// suffix ([`NotificationError::MissingTopic`]).
    pub default_topic: Option<&'a str>,
    /// The push type sent: `headers.push_type` parsed, or the one inferred from the payload.
    pub push_type: PushType,
    /// The priority sent: `headers.priority` checked, or the push type's default.
    pub priority: Priority,
    pub protocol: Protocol,
    /// How the route authenticates; the binary protocol knows only [`RouteAuth::Certificate`], whatever is given.
    pub auth: RouteAuth,
    pub payload: &'a [u8],
}

impl NotificationParts<'_> {
    /// The topic sent: the sender's, else the default.
    pub fn topic(&self) -> Option<&str> {
        self.headers.topic.as_deref().or(self.default_topic)
    }
}

/// Which part of a notification was refused, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotificationError {
    #[error("device token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Attribute(#[from] PushError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A push type APNs takes only over token-authenticated connections (docs/apns-protocol.md#rule-10), for a
    /// domain whose route authenticates with a certificate.
    #[error(
        "push type {push_type} needs token (JWT) authentication, and {}",
        route_without_token(*.protocol)
    )]
    NeedsTokenAuth {
        push_type: PushType,
        protocol: Protocol,
    },
    /// No topic on HTTP/2 where APNs needs one (docs/apns-protocol.md#http2-request): on a token-authenticated
    /// connection (`MissingTopic`), or for a push type with a suffix, which the certificate's bare bundle id that
    /// APNs would use lacks (`TopicDisallowed`).
    #[error(
        "apns-topic is missing: {}; give the notification its topic",
        missing_topic_reason(*.push_type, *.auth)
    )]
    MissingTopic {
        push_type: PushType,
        auth: RouteAuth,
    },
}

/// Why a notification without a topic cannot go ([`NotificationError::MissingTopic`]).
fn missing_topic_reason(push_type: PushType, auth: RouteAuth) -> String {
    match (auth, push_type.topic_suffix()) {
        (RouteAuth::Token, _) => {
            "APNs requires a topic on token-authenticated connections (it answers MissingTopic)"
                .to_owned()
        }
        (RouteAuth::Certificate, suffix) => format!(
            "push type {push_type} needs the bundle id followed by {:?}, and without a topic APNs uses the \
             certificate's bare bundle id",
            suffix.unwrap_or_default()
        ),
    }
}

/// Why a route of `protocol` has no token authentication, and what gives it one.
fn route_without_token(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Binary => {
            "this domain is routed to the binary protocol, which authenticates with a client certificate only; \
             route the domain to an https:// host and give it a signing key (apn_key, apn_key_id, apn_team_id)"
        }
        Protocol::Http2 => {
            "this domain's HTTP/2 route authenticates with a client certificate; give the domain a signing key \
             (apn_key, apn_key_id, apn_team_id)"
        }
    }
}

/// Checks every part and returns the parsed device token.
///
/// The device token is checked against the protocol's sizes (docs/apns-protocol.md#size-limits): 32 to 100 bytes on
/// HTTP/2, exactly 32 on the binary protocol. The binary protocol also needs a 32-bit expiry; it has no push type,
/// topic, collapse id or apns-id on the wire, so those are checked only when given and are otherwise ignored there. A push type
/// that needs token authentication is refused on a certificate route and on every binary route.
pub fn validate_notification(
    parts: &NotificationParts<'_>,
) -> Result<DeviceToken, NotificationError> {
    // Rule 10: location and Live Activity pushes only over token-authenticated connections, which the binary
    // protocol never has.
    if parts.push_type.requires_token_auth()
        && (parts.protocol == Protocol::Binary || parts.auth == RouteAuth::Certificate)
    {
        return Err(NotificationError::NeedsTokenAuth {
            push_type: parts.push_type,
            protocol: parts.protocol,
        });
    }
    let token = DeviceToken::from_hex(parts.token)?;
    match parts.protocol {
        Protocol::Http2 => token.check_apns()?,
        Protocol::Binary => token.check_binary()?,
    }
    let headers = parts.headers;
    if let Some(exp) = headers.expiration {
        push::validate_expiration(exp)?;
    }
    match parts.topic() {
        Some(topic) => {
            push::validate_topic(topic, parts.push_type)?;
        }
        // The binary protocol carries no topic; a certificate route without one sends the certificate's bundle id,
        // which only push types without a suffix take.
        None if parts.protocol == Protocol::Http2
            && (parts.auth == RouteAuth::Token || parts.push_type.topic_suffix().is_some()) =>
        {
            return Err(NotificationError::MissingTopic {
                push_type: parts.push_type,
                auth: parts.auth,
            });
        }
        None => {}
    }
    if let Some(id) = headers.collapse_id.as_deref() {
        push::validate_collapse_id(id)?;
    }
    if let Some(id) = headers.apns_id.as_deref() {
        push::validate_canonical_apns_id(id)?;
    }
    payload::validate(
        parts.payload,
        parts.push_type,
        parts.protocol,
        parts.priority,
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn headers() -> PushHeaders {
        PushHeaders {
            topic: Some("com.example.app".into()),
            push_type: Some("alert".into()),
            priority: Some(10),
            expiration: Some(0),
            collapse_id: Some("group-1".into()),
            apns_id: Some("123e4567-e89b-12d3-a456-426614174000".into()),
        }
    }

    /// A valid notification; tests change one part of it.
    fn parts() -> NotificationParts<'static> {
        static HEADERS: std::sync::LazyLock<PushHeaders> = std::sync::LazyLock::new(headers);
        NotificationParts {
            token: TOKEN,
            headers: &HEADERS,
            default_topic: None,
            push_type: PushType::Alert,
            protocol: Protocol::Http2,
            auth: RouteAuth::Certificate,
            priority: Priority::Immediate,
            payload: br#"{"aps":{"alert":"hi"}}"#,
        }
    }

    /// [`parts`] with other headers.
    fn with(headers: &PushHeaders) -> NotificationParts<'_> {
        NotificationParts { headers, ..parts() }
    }

    #[test]
    fn a_good_notification_passes_on_both_protocols() {
        assert_eq!(validate_notification(&parts()).unwrap().to_hex(), TOKEN);
        let binary = NotificationParts {
            protocol: Protocol::Binary,
            ..parts()
        };
        assert!(validate_notification(&binary).is_ok());
    }

    #[test]
    fn tokens_must_have_the_size_apns_takes_on_both_protocols() {
        // docs/apns-protocol.md#size-limits: HTTP/2 takes 32 to 100 bytes (Live Activity push tokens are 80), the
        // binary protocol 32 only. Shorter tokens (one cut short, a hex-looking SMTP local part) are refused on both.
        let token = |bytes: usize, protocol| {
            let hex = "ab".repeat(bytes);
            validate_notification(&NotificationParts {
                token: &hex,
                protocol,
                ..parts()
            })
            .map(|t| t.len())
        };
        for bytes in [32, 33, 54, 80, 100] {
            assert_eq!(
                token(bytes, Protocol::Http2),
                Ok(bytes),
                "{bytes} bytes over HTTP/2"
            );
        }
        for bytes in [1, 2, 31, 101, 150] {
            assert_eq!(
                token(bytes, Protocol::Http2),
                Err(NotificationError::Token(TokenError::WrongLength {
                    len: bytes
                })),
                "{bytes} bytes over HTTP/2"
            );
        }
        assert_eq!(token(32, Protocol::Binary), Ok(32));
        for bytes in [1, 2, 31, 33, 54, 80, 100, 101] {
            assert_eq!(
                token(bytes, Protocol::Binary),
                Err(NotificationError::Token(TokenError::WrongBinaryLength {
                    len: bytes
                })),
                "{bytes} bytes over binary"
            );
        }
        let long = "ab".repeat(101);
        let long = NotificationParts {
            token: &long,
            ..parts()
        };
        assert_eq!(
            validate_notification(&long).unwrap_err().to_string(),
            "device token: device token is 101 bytes (202 hex digits); APNs over HTTP/2 takes tokens of 32 to 100 \
             bytes (64 to 200 hex digits)"
        );
        let truncated = "ab".repeat(31);
        let truncated = NotificationParts {
            token: &truncated,
            ..parts()
        };
        assert_eq!(
            validate_notification(&truncated).unwrap_err().to_string(),
            "device token: device token is 31 bytes (62 hex digits); APNs over HTTP/2 takes tokens of 32 to 100 \
             bytes (64 to 200 hex digits)"
        );
        let short = NotificationParts {
            token: "abcd",
            protocol: Protocol::Binary,
            ..parts()
        };
        assert_eq!(
            validate_notification(&short).unwrap_err().to_string(),
            "device token: device token is 2 bytes; the binary protocol needs exactly 32"
        );
        let odd = NotificationParts {
            token: "abc",
            ..parts()
        };
        assert_eq!(
            validate_notification(&odd).unwrap_err().to_string(),
            "device token: device token has an odd number of hex digits (3)"
        );
    }

    #[test]
    fn each_field_is_named_in_its_error() {
        let long_collapse_id = PushHeaders {
            collapse_id: Some("x".repeat(65)),
            ..headers()
        };
        let bad_apns_id = PushHeaders {
            apns_id: Some("not-a-uuid".into()),
            ..headers()
        };
        let cases = [
            // A VoIP push needs the `.voip` topic.
            NotificationParts {
                push_type: PushType::Voip,
                payload: b"{}",
                ..parts()
            },
            with(&long_collapse_id),
            with(&bad_apns_id),
            NotificationParts {
                payload: b"",
                ..parts()
            },
        ];
        let want = [
            "apns-topic",
            "apns-collapse-id",
            "apns-id",
            "payload is empty",
        ];
        for (case, word) in cases.iter().zip(want) {
            let e = validate_notification(case).unwrap_err();
            assert!(e.to_string().contains(word), "{e}");
        }
    }

    #[test]
    fn expiry_must_fit_32_bits_on_both_protocols() {
        // docs/apns-protocol.md#binary-command-1, docs/apns-protocol.md#binary-command-2: the binary expiry is a u32;
        // herald keeps the HTTP/2 one in the same range rather than change it after acceptance.
        for protocol in [Protocol::Binary, Protocol::Http2] {
            let late = NotificationParts {
                headers: &PushHeaders {
                    expiration: Some(1 << 32),
                    ..headers()
                },
                protocol,
                ..parts()
            };
            let e = validate_notification(&late).unwrap_err();
            assert_eq!(
                e,
                NotificationError::Attribute(PushError::ExpirationOutOfRange(1 << 32))
            );
            assert!(
                e.to_string()
                    .starts_with("apns-expiration 4294967296 is out of range"),
                "{e}"
            );
            let last = NotificationParts {
                headers: &PushHeaders {
                    expiration: Some(u64::from(u32::MAX)),
                    ..headers()
                },
                protocol,
                ..parts()
            };
            assert!(validate_notification(&last).is_ok());
        }
    }

    #[test]
    fn collapse_ids_with_control_characters_and_uppercase_apns_ids_are_refused() {
        for bad in [
            "a\rb", "a\nb", "a\0b", "a\tb", "\u{7f}", "\u{85}x", " lead", "trail ",
        ] {
            let h = PushHeaders {
                collapse_id: Some(bad.into()),
                ..headers()
            };
            let p = with(&h);
            let e = validate_notification(&p).unwrap_err();
            assert!(
                e.to_string().starts_with("apns-collapse-id"),
                "{bad:?}: {e}"
            );
        }
        let h = PushHeaders {
            apns_id: Some("123E4567-E89B-12D3-A456-426614174000".into()),
            ..headers()
        };
        let upper = with(&h);
        let e = validate_notification(&upper).unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
    }

    /// docs/apns-protocol.md#http2-request: without a topic, a token route (every push type) and a certificate route
    /// (push types with a suffix) are refused on HTTP/2; a certificate route lets the certificate name an alert's
    /// topic, and the binary protocol carries none.
    #[test]
    fn a_missing_topic_is_refused_where_apns_needs_one() {
        let none = PushHeaders {
            topic: None,
            ..headers()
        };
        let alert = with(&none);
        assert!(validate_notification(&alert).is_ok());
        let token = NotificationParts {
            auth: RouteAuth::Token,
            ..alert
        };
        let e = validate_notification(&token).unwrap_err();
        assert_eq!(
            e,
            NotificationError::MissingTopic {
                push_type: PushType::Alert,
                auth: RouteAuth::Token
            }
        );
        assert!(
            e.to_string().starts_with("apns-topic is missing")
                && e.to_string().contains("MissingTopic"),
            "{e}"
        );
        let h = PushHeaders {
            push_type: Some("voip".into()),
            ..none.clone()
        };
        let voip = NotificationParts {
            push_type: PushType::Voip,
            payload: b"{}",
            ..with(&h)
        };
        let e = validate_notification(&voip).unwrap_err();
        assert!(
            e.to_string().contains("\".voip\"") && !e.to_string().contains("  "),
            "{e}"
        );
        let derived = NotificationParts {
            default_topic: Some("com.example.app.voip"),
            ..voip
        };
        assert!(validate_notification(&derived).is_ok());
        let binary = NotificationParts {
            protocol: Protocol::Binary,
            ..voip
        };
        assert!(validate_notification(&binary).is_ok());
    }

    /// docs/apns-protocol.md#rule-10: a location push goes only over a token-authenticated HTTP/2 route; a
    /// certificate route and a binary route (certificates only) refuse it, naming the push type and the route.
    #[test]
    fn location_pushes_need_a_token_authenticated_http2_route() {
        let h = PushHeaders {
            topic: Some("com.example.app.location-query".into()),
            push_type: Some("location".into()),
            ..headers()
        };
        let location = NotificationParts {
            push_type: PushType::Location,
            payload: br#"{"aps":{}}"#,
            ..with(&h)
        };
        let token = NotificationParts {
            auth: RouteAuth::Token,
            ..location
        };
        assert!(validate_notification(&token).is_ok());

        let certificate = validate_notification(&location).unwrap_err();
        assert_eq!(
            certificate,
            NotificationError::NeedsTokenAuth {
                push_type: PushType::Location,
                protocol: Protocol::Http2,
            }
        );
        let text = certificate.to_string();
        assert!(
            text.starts_with("push type location needs token (JWT) authentication")
                && text.contains("HTTP/2 route authenticates with a client certificate")
                && text.contains("apn_key"),
            "{text}"
        );
        // The binary protocol has no token authentication, whatever the domain is given.
        for auth in [RouteAuth::Certificate, RouteAuth::Token] {
            let binary = NotificationParts {
                protocol: Protocol::Binary,
                auth,
                ..location
            };
            let e = validate_notification(&binary).unwrap_err();
            assert!(
                e.to_string().contains("routed to the binary protocol"),
                "{auth:?}: {e}"
            );
        }
        // Other push types keep going over certificate routes.
        assert!(validate_notification(&parts()).is_ok());
    }
}
