//! Request attributes of a push: push type, protocol, priority, topic, collapse id, apns-id and expiration,
//! with the checks APNs applies to each header (docs/apns-protocol.md#http2-request,
//! docs/apns-protocol.md#payload-limits, docs/apns-protocol.md#provider-checks).

use std::fmt;
use std::str::FromStr;

/// Which APNs wire protocol carries a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The legacy binary provider API (docs/apns-protocol.md#legacy-binary).
    Binary,
    /// The HTTP/2 provider API (docs/apns-protocol.md#http2).
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Binary => "the binary protocol",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// Payload limit of the binary protocol from iOS 8 on (docs/apns-protocol.md#size-limits).
pub const BINARY_PAYLOAD_LIMIT: usize = 2048;
/// Payload limit of HTTP/2 pushes other than VoIP (docs/apns-protocol.md#payload-limits).
pub const HTTP2_PAYLOAD_LIMIT: usize = 4096;
/// Payload limit of HTTP/2 VoIP pushes (docs/apns-protocol.md#payload-limits).
pub const VOIP_PAYLOAD_LIMIT: usize = 5120;
/// Longest `apns-collapse-id`, in bytes (docs/apns-protocol.md#http2-request).
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// Why a request attribute was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("unknown apns-push-type {0:?}")]
    UnknownPushType(String),
    #[error("apns-priority must be 10, 5 or 1, not {0:?}")]
    BadPriority(String),
    #[error("apns-collapse-id is {len} bytes; at most {MAX_COLLAPSE_ID_BYTES} are allowed")]
    CollapseIdTooLong { len: usize },
    #[error(
        "apns-collapse-id {id:?} must be printable ASCII without leading or trailing spaces (no control characters), \
         which an HTTP/2 header carries unchanged"
    )]
    BadCollapseIdCharacters { id: String },
    #[error("apns-id {0:?} is not a canonical 8-4-4-4-12 UUID")]
    BadApnsId(String),
    #[error("apns-id {0:?} has uppercase hex digits; APNs takes the canonical lowercase form")]
    ApnsIdNotLowercase(String),
    #[error("apns-expiration {0:?} is not a decimal count of seconds since the epoch")]
    BadExpiration(String),
    #[error(
        "apns-expiration {0} is out of range: at most {MAX_EXPIRATION} (seconds since the epoch, 32 bits)"
    )]
    ExpirationOutOfRange(u64),
    #[error("apns-topic is empty")]
    EmptyTopic,
    #[error("apns-topic {topic:?} has characters outside printable ASCII")]
    BadTopicCharacters { topic: String },
    #[error("apns-topic {topic:?} does not end in {suffix:?}, which push type {push_type} needs")]
    TopicSuffixMismatch {
        topic: String,
        push_type: PushType,
        suffix: &'static str,
    },
    /// A push type that goes to the bare bundle id (alert, background, mdm) sent to a topic ending in a push-type
    /// suffix of two labels, which no bundle id ends in: APNs answers `TopicDisallowed`.
    #[error(
        "apns-topic {topic:?} ends in {suffix:?}, {}; push type {push_type} goes to the app's bare bundle id \
         (APNs would refuse it with TopicDisallowed): send it to {bundle:?}, or name the push type the topic is for",
        suffix_owner(*.named)
    )]
    TopicNamesOtherPushType {
        topic: String,
        push_type: PushType,
        suffix: String,
        /// The push type whose suffix it is, when herald knows it.
        named: Option<PushType>,
        bundle: String,
    },
}

/// Whose suffix a [`PushError::TopicNamesOtherPushType`] topic ends in.
fn suffix_owner(named: Option<PushType>) -> String {
    match named {
        Some(p) => format!("the topic suffix of push type {p}"),
        None => "a push-type topic suffix".to_owned(),
    }
}

/// Value of the `apns-push-type` header (docs/apns-protocol.md#push-types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushType {
    Alert,
    Background,
    Complication,
    Controls,
    FileProvider,
    LiveActivity,
    Location,
    Mdm,
    PushToTalk,
    Voip,
    Widgets,
}

impl PushType {
    /// Every push type, in the order of the table in docs/apns-protocol.md#push-types.
    pub const ALL: [PushType; 11] = [
        PushType::Alert,
        PushType::Background,
        PushType::Complication,
        PushType::Controls,
        PushType::FileProvider,
        PushType::LiveActivity,
        PushType::Location,
        PushType::Mdm,
        PushType::PushToTalk,
        PushType::Voip,
        PushType::Widgets,
    ];

    /// The header value (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Complication => "complication",
            PushType::Controls => "controls",
            PushType::FileProvider => "fileprovider",
            PushType::LiveActivity => "liveactivity",
            PushType::Location => "location",
            PushType::Mdm => "mdm",
            PushType::PushToTalk => "pushtotalk",
            PushType::Voip => "voip",
            PushType::Widgets => "widgets",
        }
    }

    /// What must follow the bundle id in `apns-topic` for this push type; `None` when the topic is the bare
    /// bundle id (alert, background) or comes from the certificate's UID (mdm).
    pub fn topic_suffix(self) -> Option<&'static str> {
        match self {
            PushType::Alert | PushType::Background | PushType::Mdm => None,
            PushType::Complication => Some(".complication"),
            PushType::Controls => Some(".push-type.controls"),
            PushType::FileProvider => Some(".pushkit.fileprovider"),
            PushType::LiveActivity => Some(".push-type.liveactivity"),
            PushType::Location => Some(".location-query"),
            PushType::PushToTalk => Some(".voip-ptt"),
            PushType::Voip => Some(".voip"),
            PushType::Widgets => Some(".push-type.widgets"),
        }
    }

    /// The push type whose suffix `topic` ends in after a non-empty bundle id (docs/apns-protocol.md#push-types):
    /// `com.example.app.voip` is `voip`, `com.example.app.voip-ptt` is `pushtotalk`. `None` for a topic without
    /// one of the suffixes (a bare bundle id: alert, background or mdm, which only the payload tells apart). No
    /// suffix of the table ends in another, so at most one matches.
    pub fn from_topic_suffix(topic: &str) -> Option<PushType> {
        PushType::ALL.into_iter().find(|p| {
            p.topic_suffix()
                .is_some_and(|s| topic.len() > s.len() && topic.ends_with(s))
        })
    }

    /// Largest payload in bytes: 2048 on the binary protocol; on HTTP/2 5120 for VoIP and 4096 otherwise
    /// (docs/apns-protocol.md#size-limits, docs/apns-protocol.md#payload-limits).
    pub fn payload_limit(self, protocol: Protocol) -> usize {
        match (protocol, self) {
            (Protocol::Binary, _) => BINARY_PAYLOAD_LIMIT,
            (Protocol::Http2, PushType::Voip) => VOIP_PAYLOAD_LIMIT,
            (Protocol::Http2, _) => HTTP2_PAYLOAD_LIMIT,
        }
    }

    /// The priority to send when the sender named none: 5 for background pushes, for which 10 is an error
    /// (docs/apns-protocol.md#push-types), else 10 (what APNs assumes when the header is absent).
    pub fn default_priority(self) -> Priority {
        match self {
            PushType::Background => Priority::Conserve,
            _ => Priority::Immediate,
        }
    }

    /// Location and Live Activity pushes are accepted only on token-authenticated connections
    /// (docs/apns-protocol.md#push-types, docs/apns-protocol.md#rule-10, docs/live-activities.md): a client
    /// certificate covers only the app's own topic and its VoIP and complication topics, so APNs refuses either of
    /// these over a certificate connection.
    pub fn requires_token_auth(self) -> bool {
        matches!(self, PushType::Location | PushType::LiveActivity)
    }
}

impl fmt::Display for PushType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PushType {
    type Err = PushError;
    /// Exact lowercase header values only; anything else is what APNs answers with `InvalidPushType`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PushType::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PushError::UnknownPushType(s.to_owned()))
    }
}

/// Value of the `apns-priority` header (docs/apns-protocol.md#http2-request). Absent means [`Priority::Immediate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Priority {
    /// Power-first: never wakes the device.
    Low = 1,
    /// Power-conserving delivery; may be grouped or throttled.
    Conserve = 5,
    /// Send at once.
    #[default]
    Immediate = 10,
}

impl Priority {
    pub fn from_u8(v: u8) -> Result<Priority, PushError> {
        match v {
            10 => Ok(Priority::Immediate),
            5 => Ok(Priority::Conserve),
            1 => Ok(Priority::Low),
            other => Err(PushError::BadPriority(other.to_string())),
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The `apns-priority` header text: "10", "5" or "1".
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Immediate => "10",
            Priority::Conserve => "5",
            Priority::Low => "1",
        }
    }
}

impl FromStr for Priority {
    type Err = PushError;
    /// The header text: exactly "10", "5" or "1".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "10" => Ok(Priority::Immediate),
            "5" => Ok(Priority::Conserve),
            "1" => Ok(Priority::Low),
            other => Err(PushError::BadPriority(other.to_owned())),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

/// Largest `apns-expiration` herald takes: the field is 32 bits in the binary protocol and in herald's queue.
pub const MAX_EXPIRATION: u64 = u32::MAX as u64;

/// `apns-collapse-id` may be at most 64 bytes (docs/apns-protocol.md#http2-request, docs/apns-protocol.md#rule-5), and
/// must be a value an HTTP/2 header carries unchanged: printable ASCII (no CR, LF, NUL, TAB, DEL or other control
/// character; header values outside ASCII are opaque bytes receivers may refuse), no space at either end
/// (RFC 9113 §8.2.1).
pub fn validate_collapse_id(id: &str) -> Result<(), PushError> {
    if id.len() > MAX_COLLAPSE_ID_BYTES {
        return Err(PushError::CollapseIdTooLong { len: id.len() });
    }
    if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) || id.starts_with(' ') || id.ends_with(' ') {
        return Err(PushError::BadCollapseIdCharacters { id: id.to_owned() });
    }
    Ok(())
}

/// `apns-expiration` in the range herald sends: 0 to [`MAX_EXPIRATION`].
pub fn validate_expiration(seconds: u64) -> Result<u32, PushError> {
    u32::try_from(seconds).map_err(|_| PushError::ExpirationOutOfRange(seconds))
}

/// [`validate_apns_id`], and lowercase, as APNs documents it: what herald accepts from senders, so that the id it
/// sends is the one it was given (docs/apns-protocol.md#http2-request).
pub fn validate_canonical_apns_id(id: &str) -> Result<(), PushError> {
    validate_apns_id(id)?;
    if id.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(PushError::ApnsIdNotLowercase(id.to_owned()));
    }
    Ok(())
}

/// `apns-id` must be a canonical UUID: 8-4-4-4-12 hex digits with hyphens (docs/apns-protocol.md#http2-request,
/// docs/apns-protocol.md#rule-6).
///
/// Decision: hex digits of either case are accepted, as UUID parsers conventionally do (and as pushy's mock
/// does); herald itself always generates lowercase ids. Braces, URNs and the unhyphenated form are refused.
pub fn validate_apns_id(id: &str) -> Result<(), PushError> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(PushError::BadApnsId(id.to_owned()))
    }
}

/// An `apns-id` held in 17 bytes instead of a 36-character string: the 16 bytes of the UUID and whether its hex
/// digits were uppercase, so that it prints exactly as it was given ([`validate_apns_id`] accepts either case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApnsId {
    bytes: [u8; 16],
    uppercase: bool,
}

impl ApnsId {
    /// The id of these 16 bytes, printed in lowercase (as herald generates them).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ApnsId {
            bytes,
            uppercase: false,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// The canonical 8-4-4-4-12 text, in the case it was given.
    pub fn encode(&self) -> [u8; 36] {
        let digits: &[u8; 16] = if self.uppercase {
            b"0123456789ABCDEF"
        } else {
            b"0123456789abcdef"
        };
        let mut out = [b'-'; 36];
        let mut at = 0;
        for (i, b) in self.bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            out[at] = digits[usize::from(b >> 4)];
            out[at + 1] = digits[usize::from(b & 0xf)];
            at += 2;
        }
        out
    }
}

impl FromStr for ApnsId {
    type Err = PushError;
    /// What [`validate_apns_id`] accepts; mixed case is refused, since it could not print back as given.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_apns_id(s)?;
        let upper = s.bytes().any(|c| c.is_ascii_uppercase());
        let lower = s.bytes().any(|c| c.is_ascii_lowercase());
        if upper && lower {
            return Err(PushError::BadApnsId(s.to_owned()));
        }
        let mut bytes = [0u8; 16];
        let mut nibbles = s.bytes().filter(|&c| c != b'-').map(|c| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        });
        for b in &mut bytes {
            let hi = nibbles.next().unwrap_or(0);
            let lo = nibbles.next().unwrap_or(0);
            *b = (hi << 4) | lo;
        }
        Ok(ApnsId {
            bytes,
            uppercase: upper,
        })
    }
}

impl fmt::Display for ApnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // Only ASCII hex digits and hyphens were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Parses `apns-expiration`: decimal digits only, seconds since the Unix epoch; 0 means "try once, don't
/// store" (docs/apns-protocol.md#http2-request).
pub fn parse_expiration(value: &str) -> Result<u64, PushError> {
    if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(PushError::BadExpiration(value.to_owned()));
    }
    value
        .parse::<u64>()
        .map_err(|_| PushError::BadExpiration(value.to_owned()))
}

/// The `apns-topic` for a bundle id and push type: the bundle id plus the type's suffix
/// (docs/apns-protocol.md#push-types).
pub fn topic_for(bundle: &str, push_type: PushType) -> String {
    match push_type.topic_suffix() {
        Some(suffix) => {
            let mut t = String::with_capacity(bundle.len() + suffix.len());
            t.push_str(bundle);
            t.push_str(suffix);
            t
        }
        None => bundle.to_owned(),
    }
}

/// The bundle id of `topic`: the topic without the push-type suffix it ends in ([`PushType::from_topic_suffix`]),
/// else the whole topic.
pub fn bundle_id(topic: &str) -> &str {
    PushType::from_topic_suffix(topic)
        .and_then(PushType::topic_suffix)
        .and_then(|suffix| topic.strip_suffix(suffix))
        .unwrap_or(topic)
}

/// The topic a push of `push_type` takes from the domain's topic or the certificate's bundle id `base`, when its
/// sender named none (docs/apns-protocol.md#push-types): for a push type with a suffix, `base` when it already ends
/// in that suffix, else its bundle id ([`bundle_id`], so that `com.example.app.voip` gives
/// `com.example.app.push-type.liveactivity`, not a topic with two suffixes) plus the suffix; for alert,
/// background and mdm, `base` unchanged.
pub fn derive_topic(base: &str, push_type: PushType) -> String {
    match push_type.topic_suffix() {
        Some(suffix) if !(base.len() > suffix.len() && base.ends_with(suffix)) => {
            topic_for(bundle_id(base), push_type)
        }
        _ => base.to_owned(),
    }
}

/// The labels that begin a push-type suffix of two labels (`.push-type.liveactivity`, `.pushkit.fileprovider`, ...):
/// Apple's namespaces for push-type topics, which no bundle id ends in.
const PUSH_TYPE_NAMESPACES: [&str; 2] = ["push-type", "pushkit"];

/// The push-type suffix of two labels that `topic` ends in after a non-empty bundle id, as the topic's own text: one
/// of the table's (`.push-type.widgets`, `.pushkit.fileprovider`, ...) or any other in the same namespaces
/// (`.push-type.<word>`, `.pushkit.<word>`).
fn two_label_suffix(topic: &str) -> Option<&str> {
    let (rest, last) = topic.rsplit_once('.')?;
    let (bundle, namespace) = rest.rsplit_once('.')?;
    (!bundle.is_empty() && !last.is_empty() && PUSH_TYPE_NAMESPACES.contains(&namespace))
        .then(|| &topic[bundle.len()..])
}

/// Checks that `topic` fits `push_type`: non-empty printable ASCII, and for push types that have a suffix it
/// must end with it after a non-empty bundle id (docs/apns-protocol.md#push-types, docs/apns-protocol.md#rule-3).
/// Returns the bundle id.
///
/// Alert, background and mdm pushes go to the bare bundle id: a topic ending in a push-type suffix of two labels
/// (`.push-type.<word>`, `.pushkit.<word>`), which no bundle id ends in, is refused for them
/// ([`PushError::TopicNamesOtherPushType`]), as APNs would refuse it (`TopicDisallowed`). Decision: the one-label
/// suffixes (`.voip`, `.voip-ptt`, `.complication`, `.location-query`) are not refused for them, because a bundle id
/// may legitimately end in such a word (an app `com.example.voip`).
pub fn validate_topic(topic: &str, push_type: PushType) -> Result<&str, PushError> {
    if topic.is_empty() {
        return Err(PushError::EmptyTopic);
    }
    if !topic.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(PushError::BadTopicCharacters {
            topic: topic.to_owned(),
        });
    }
    match push_type.topic_suffix() {
        None => match two_label_suffix(topic) {
            Some(suffix) => Err(PushError::TopicNamesOtherPushType {
                topic: topic.to_owned(),
                push_type,
                suffix: suffix.to_owned(),
                named: PushType::from_topic_suffix(topic),
                bundle: topic[..topic.len() - suffix.len()].to_owned(),
            }),
            None => Ok(topic),
        },
        Some(suffix) => match topic.strip_suffix(suffix) {
            Some(bundle) if !bundle.is_empty() => Ok(bundle),
            _ => Err(PushError::TopicSuffixMismatch {
                topic: topic.to_owned(),
                push_type,
                suffix,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_type_strings_round_trip() {
        // docs/apns-protocol.md#push-types: all 11 values must be accepted.
        let names = [
            "alert",
            "background",
            "complication",
            "controls",
            "fileprovider",
            "liveactivity",
            "location",
            "mdm",
            "pushtotalk",
            "voip",
            "widgets",
        ];
        for (p, name) in PushType::ALL.iter().zip(names) {
            assert_eq!(p.as_str(), name);
            assert_eq!(name.parse::<PushType>().unwrap(), *p);
        }
        assert_eq!(
            "Alert".parse::<PushType>(),
            Err(PushError::UnknownPushType("Alert".into()))
        );
        assert!("".parse::<PushType>().is_err());
    }

    #[test]
    fn topic_suffixes_follow_the_table() {
        // docs/apns-protocol.md#push-types push-type/topic table.
        let b = "com.example.app";
        assert_eq!(topic_for(b, PushType::Alert), b);
        assert_eq!(topic_for(b, PushType::Background), b);
        assert_eq!(topic_for(b, PushType::Mdm), b);
        assert_eq!(topic_for(b, PushType::Voip), "com.example.app.voip");
        assert_eq!(
            topic_for(b, PushType::Complication),
            "com.example.app.complication"
        );
        assert_eq!(
            topic_for(b, PushType::Controls),
            "com.example.app.push-type.controls"
        );
        assert_eq!(
            topic_for(b, PushType::FileProvider),
            "com.example.app.pushkit.fileprovider"
        );
        assert_eq!(
            topic_for(b, PushType::LiveActivity),
            "com.example.app.push-type.liveactivity"
        );
        assert_eq!(
            topic_for(b, PushType::Location),
            "com.example.app.location-query"
        );
        assert_eq!(
            topic_for(b, PushType::PushToTalk),
            "com.example.app.voip-ptt"
        );
        assert_eq!(
            topic_for(b, PushType::Widgets),
            "com.example.app.push-type.widgets"
        );
        for p in PushType::ALL {
            assert_eq!(validate_topic(&topic_for(b, p), p), Ok(b));
        }
    }

    #[test]
    fn topic_suffixes_name_their_push_type() {
        // docs/apns-protocol.md#push-types: every suffix of the table, after a bundle id, names its type.
        let b = "com.example.app";
        for p in PushType::ALL {
            let topic = topic_for(b, p);
            let named = PushType::from_topic_suffix(&topic);
            match p.topic_suffix() {
                Some(_) => assert_eq!(named, Some(p), "{topic}"),
                None => assert_eq!(named, None, "{topic}"),
            }
            assert_eq!(bundle_id(&topic), b, "{topic}");
        }
        // A suffix alone is no topic of its type; an unknown ending is none.
        assert_eq!(PushType::from_topic_suffix(".voip"), None);
        assert_eq!(PushType::from_topic_suffix("com.example.voipx"), None);
        assert_eq!(bundle_id(".voip"), ".voip");
    }

    #[test]
    fn derived_topics_carry_one_suffix() {
        let b = "com.example.app";
        for p in PushType::ALL {
            assert_eq!(derive_topic(b, p), topic_for(b, p), "{p}");
            // A base that already ends in the type's suffix is kept.
            assert_eq!(derive_topic(&topic_for(b, p), p), topic_for(b, p), "{p}");
        }
        // Another type's suffix is replaced, not added to.
        assert_eq!(
            derive_topic("com.example.app.voip", PushType::LiveActivity),
            "com.example.app.push-type.liveactivity"
        );
        assert_eq!(
            derive_topic("com.example.app.voip", PushType::PushToTalk),
            "com.example.app.voip-ptt"
        );
        // Alert, background and mdm take the base as it is.
        assert_eq!(
            derive_topic("com.example.app.voip", PushType::Alert),
            "com.example.app.voip"
        );
    }

    #[test]
    fn topic_validation_rejects_mismatches() {
        assert_eq!(
            validate_topic("com.example.app", PushType::Voip),
            Err(PushError::TopicSuffixMismatch {
                topic: "com.example.app".into(),
                push_type: PushType::Voip,
                suffix: ".voip"
            })
        );
        assert!(validate_topic(".voip", PushType::Voip).is_err());
        assert_eq!(
            validate_topic("", PushType::Alert),
            Err(PushError::EmptyTopic)
        );
        assert!(validate_topic("com.example app", PushType::Alert).is_err());
        // A voip-ptt topic is not a voip topic.
        assert!(validate_topic("com.example.app.voip-ptt", PushType::Voip).is_err());
        // A push type that goes to the bare bundle id, to another type's topic of two labels: refused, naming the
        // type the suffix belongs to and the bundle id to send to.
        for bare in [PushType::Alert, PushType::Background, PushType::Mdm] {
            for named in [
                PushType::LiveActivity,
                PushType::Widgets,
                PushType::Controls,
                PushType::FileProvider,
            ] {
                let topic = topic_for("com.x", named);
                let e = validate_topic(&topic, bare).unwrap_err();
                assert_eq!(
                    e,
                    PushError::TopicNamesOtherPushType {
                        topic: topic.clone(),
                        push_type: bare,
                        suffix: named.topic_suffix().unwrap_or_default().to_owned(),
                        named: Some(named),
                        bundle: "com.x".into(),
                    }
                );
                let text = e.to_string();
                assert!(
                    text.contains(&format!("the topic suffix of push type {named}"))
                        && text.contains(&format!("push type {bare} goes to"))
                        && text.contains("TopicDisallowed")
                        && text.contains("\"com.x\"")
                        && !text.contains("  "),
                    "{text}"
                );
            }
            // A suffix in the same namespaces that herald does not know is no bundle id either.
            let e = validate_topic("com.x.push-type.newthing", bare).unwrap_err();
            assert!(e.to_string().contains("a push-type topic suffix"), "{e}");
            assert!(validate_topic("com.x.pushkit.other", bare).is_err());
            // One-label suffixes may end a bundle id: an app `com.x.voip` takes alerts.
            for topic in [
                "com.x.voip",
                "com.x.voip-ptt",
                "com.x.complication",
                "com.x.location-query",
                "com.x.pushkit",
                "push-type.x",
                "com.push-type",
            ] {
                assert_eq!(validate_topic(topic, bare), Ok(topic), "{bare} {topic}");
            }
        }
        // The push types with a suffix keep their own check.
        assert!(validate_topic("com.x.push-type.liveactivity", PushType::LiveActivity).is_ok());
        assert!(validate_topic("com.x.push-type.widgets", PushType::LiveActivity).is_err());
    }

    #[test]
    fn payload_limits_by_protocol_and_type() {
        // docs/apns-protocol.md#size-limits (binary 2048), docs/apns-protocol.md#payload-limits (HTTP/2 4096, VoIP
        // 5120).
        for p in PushType::ALL {
            assert_eq!(p.payload_limit(Protocol::Binary), 2048);
            let want = if p == PushType::Voip { 5120 } else { 4096 };
            assert_eq!(p.payload_limit(Protocol::Http2), want);
        }
        assert!(PushType::Location.requires_token_auth());
        assert!(PushType::LiveActivity.requires_token_auth());
        assert_eq!(PushType::Background.default_priority(), Priority::Conserve);
        assert_eq!(PushType::Alert.default_priority(), Priority::Immediate);
        assert!(!PushType::Alert.requires_token_auth());
    }

    #[test]
    fn priorities() {
        // docs/apns-protocol.md#http2-request: 10, 5, 1; anything else is BadPriority.
        for (v, p) in [
            (10, Priority::Immediate),
            (5, Priority::Conserve),
            (1, Priority::Low),
        ] {
            assert_eq!(Priority::from_u8(v).unwrap(), p);
            assert_eq!(p.as_u8(), v);
            assert_eq!(v.to_string().parse::<Priority>().unwrap(), p);
            assert_eq!(p.as_str(), v.to_string());
        }
        for v in [0u8, 2, 4, 6, 9, 11, 255] {
            assert!(Priority::from_u8(v).is_err());
        }
        assert!("010".parse::<Priority>().is_err());
        assert!(" 10".parse::<Priority>().is_err());
        assert_eq!(Priority::default(), Priority::Immediate);
    }

    #[test]
    fn collapse_id_limit_is_64_bytes() {
        // docs/apns-protocol.md#http2-request: at most 64 bytes (bytes, not characters).
        assert!(validate_collapse_id(&"a".repeat(64)).is_ok());
        assert_eq!(
            validate_collapse_id(&"a".repeat(65)),
            Err(PushError::CollapseIdTooLong { len: 65 })
        );
        // 22 three-byte characters = 66 bytes.
        assert!(validate_collapse_id(&"\u{20ac}".repeat(22)).is_err());
        assert!(validate_collapse_id("").is_ok());
        assert!(validate_collapse_id("a b").is_ok());
        for bad in [
            "\r", "a\n", "\0", "\t", "x\u{1b}", "\u{7f}", " a", "a ", "\u{20ac}", "\u{85}",
        ] {
            assert_eq!(
                validate_collapse_id(bad),
                Err(PushError::BadCollapseIdCharacters { id: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expiration_range_is_32_bits() {
        assert_eq!(validate_expiration(0), Ok(0));
        assert_eq!(validate_expiration(u64::from(u32::MAX)), Ok(u32::MAX));
        assert_eq!(
            validate_expiration(1 << 32),
            Err(PushError::ExpirationOutOfRange(1 << 32))
        );
    }

    #[test]
    fn apns_id_prints_back_as_given() {
        for text in [
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567-E89B-12D3-A456-426614174000",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            let id: ApnsId = text.parse().expect("valid");
            assert_eq!(id.to_string(), text);
        }
        assert!(
            "123e4567-E89B-12d3-a456-426614174000"
                .parse::<ApnsId>()
                .is_err()
        );
        assert!(
            "123e4567e89b12d3a456426614174000"
                .parse::<ApnsId>()
                .is_err()
        );
        assert_eq!(std::mem::size_of::<Option<ApnsId>>(), 17);
    }

    #[test]
    fn apns_id_must_be_canonical_uuid() {
        // docs/apns-protocol.md#http2-request.
        assert!(validate_apns_id("123e4567-e89b-12d3-a456-426614174000").is_ok());
        assert!(validate_apns_id("123E4567-E89B-12D3-A456-426614174000").is_ok());
        for bad in [
            "",
            "123e4567e89b12d3a456426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567-e89b-12d3-a456-4266141740000",
            "123e4567-e89b-12d3-a456_426614174000",
            "g23e4567-e89b-12d3-a456-426614174000",
        ] {
            assert!(validate_apns_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiration_parsing() {
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("1700000000"), Ok(1_700_000_000));
        for bad in ["", "-1", "1.5", " 1", "abc", "99999999999999999999999"] {
            assert!(parse_expiration(bad).is_err(), "{bad}");
        }
    }
}
