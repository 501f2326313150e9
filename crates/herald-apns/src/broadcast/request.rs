//! The requests of channel management and broadcast sends (docs/apns-protocol.md §6.2): channel ids, storage
//! policies, and for each call its method, `:path`, headers and body, checked before anything is sent.

use std::fmt;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method};

use crate::payload::{PayloadError, validate_broadcast};
use crate::push::{PushType, bundle_id, validate_apns_id};

pub use crate::payload::BROADCAST_PAYLOAD_LIMIT;

/// `apns-channel-id`: the channel of a read, delete or broadcast, and the answer to a create.
pub static APNS_CHANNEL_ID: HeaderName = HeaderName::from_static("apns-channel-id");
/// `apns-request-id`: a UUID the caller may choose; APNs repeats it in the answer.
pub static APNS_REQUEST_ID: HeaderName = HeaderName::from_static("apns-request-id");
pub(crate) static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
pub(crate) static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
pub(crate) static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");

/// Longest channel id herald accepts, from a caller or in an APNs answer alike. APNs does not publish a size and
/// asks providers not to assume one (ids seen are 24 characters): the bound is a generous sanity limit that only
/// keeps garbage out of headers and logs. It is the same both ways, so that every id APNs hands out can be read,
/// deleted and broadcast to through herald.
pub const MAX_CHANNEL_ID_LEN: usize = 4096;

/// A request that cannot be sent as given, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("bundle id is empty")]
    EmptyBundleId,
    #[error("bundle id {0:?} contains characters not allowed in a path")]
    BadBundleId(String),
    #[error("channel id is empty")]
    EmptyChannelId,
    /// The id, shortened for the text, and its length in characters.
    #[error(
        "channel id {id:?} is {len} characters long; herald takes at most {max}",
        max = MAX_CHANNEL_ID_LEN
    )]
    ChannelIdTooLong { id: String, len: usize },
    /// The id, shortened for the text, and what keeps it from being base64.
    #[error(
        "channel id {id:?} is not base64: {fault} (APNs ids are standard base64: A-Z a-z 0-9 + /, padded with = \
         to a multiple of 4 characters)"
    )]
    BadChannelId { id: String, fault: Base64Fault },
    #[error("priority {0} is not allowed for a broadcast (10, 5 or 1)")]
    BadPriority(u8),
    #[error("request id {0:?} is not a UUID")]
    BadRequestId(String),
    #[error("expiration must be 0 on a channel that stores no message")]
    ExpirationOnNoStorage,
    #[error("message-storage-policy {0} is not 0 (no storage) or 1 (most recent message)")]
    BadStoragePolicy(i64),
    #[error("broadcast payload: {0}")]
    Payload(#[from] PayloadError),
}

/// What keeps a channel id from being base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Base64Fault {
    #[error("character {found:?} at position {position} is outside the base64 alphabet")]
    NotInAlphabet { found: char, position: usize },
    #[error("'=' at position {position} is padding, which may only end the id")]
    PaddingInside { position: usize },
    #[error("it ends in {count} '=', where base64 pads with at most 2")]
    TooMuchPadding { count: usize },
    #[error("it is padded but {len} characters long, not a multiple of 4")]
    PaddedLength { len: usize },
    #[error(
        "its {data} characters before any padding leave 1 over a group of 4, which encodes no byte"
    )]
    StrayCharacter { data: usize },
}

/// How much of a refused channel id its error text repeats.
const ECHOED_CHANNEL_ID_CHARS: usize = 40;

/// The start of `s` for an error text: at most [`ECHOED_CHANNEL_ID_CHARS`] characters, then `…` if there was more.
fn echo(s: &str) -> String {
    let mut chars = s.chars();
    let mut shown: String = chars.by_ref().take(ECHOED_CHANNEL_ID_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// Every character of `s` is in the standard base64 alphabet or `=`.
fn check_alphabet(s: &str) -> Result<(), Base64Fault> {
    match s
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        Some((position, found)) => Err(Base64Fault::NotInAlphabet { found, position }),
        None => Ok(()),
    }
}

/// Whether `s`, already within the alphabet ([`check_alphabet`]), is laid out as base64 the way APNs hands channel
/// ids out (docs/apns-protocol.md §6.2: `apns-channel-id` is base64; the simulator encodes 16 random bytes with the
/// standard alphabet and padding): `=` only at the end and at most two of them, a padded id a whole number of
/// 4-character groups. An unpadded id is taken too, as long as its length is one that base64 text can have (not 1
/// over a group of 4).
fn check_layout(s: &str) -> Result<(), Base64Fault> {
    let data = s.trim_end_matches('=');
    if let Some(position) = data.find('=') {
        return Err(Base64Fault::PaddingInside { position });
    }
    let padding = s.len() - data.len();
    if padding > 2 {
        return Err(Base64Fault::TooMuchPadding { count: padding });
    }
    if padding > 0 && !s.len().is_multiple_of(4) {
        return Err(Base64Fault::PaddedLength { len: s.len() });
    }
    if data.len() % 4 == 1 {
        return Err(Base64Fault::StrayCharacter { data: data.len() });
    }
    Ok(())
}

/// A channel id: the opaque base64 string APNs chose when the channel was created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

impl ChannelId {
    /// Checks the text: non-empty, base64 ([`check_alphabet`], [`check_layout`]), at most [`MAX_CHANNEL_ID_LEN`]
    /// characters. A character outside the alphabet is named before the length, so that the length is counted in
    /// ASCII characters.
    pub fn parse(s: &str) -> Result<ChannelId, RequestError> {
        if s.is_empty() {
            return Err(RequestError::EmptyChannelId);
        }
        let not_base64 = |fault| RequestError::BadChannelId { id: echo(s), fault };
        check_alphabet(s).map_err(not_base64)?;
        if s.len() > MAX_CHANNEL_ID_LEN {
            return Err(RequestError::ChannelIdTooLong {
                id: echo(s),
                len: s.len(),
            });
        }
        check_layout(s).map_err(not_base64)?;
        Ok(ChannelId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn header(&self) -> HeaderValue {
        // The alphabet was checked in `parse`: every byte is a visible ASCII character.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `message-storage-policy` of a channel, fixed when it is created.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "u8", try_from = "i64")]
pub enum StoragePolicy {
    /// 0: no message is kept; broadcasts must carry expiration 0 (or none), and may be sent more often.
    #[default]
    NoStorage,
    /// 1: the most recent message is kept for up to 8 hours for devices that were offline.
    MostRecentMessage,
}

impl StoragePolicy {
    pub fn as_u8(self) -> u8 {
        match self {
            StoragePolicy::NoStorage => 0,
            StoragePolicy::MostRecentMessage => 1,
        }
    }
}

impl From<StoragePolicy> for u8 {
    fn from(p: StoragePolicy) -> u8 {
        p.as_u8()
    }
}

impl TryFrom<i64> for StoragePolicy {
    type Error = RequestError;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(StoragePolicy::NoStorage),
            1 => Ok(StoragePolicy::MostRecentMessage),
            other => Err(RequestError::BadStoragePolicy(other)),
        }
    }
}

impl fmt::Display for StoragePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoragePolicy::NoStorage => "no-storage",
            StoragePolicy::MostRecentMessage => "most-recent-message",
        })
    }
}

/// The bundle id of a management or broadcast path: the topic without the push-type suffix it ends in
/// (`.push-type.liveactivity`, `.push-type.widgets`, `.voip`, …), as [`bundle_id`] gives it for device pushes, so
/// that a Live Activity's device pushes and its channels name the same app (the path carries the app's bundle id
/// only, §6.2).
pub fn bundle_for_path(topic: &str) -> Result<&str, RequestError> {
    let bundle = bundle_id(topic);
    // A suffix alone names no app.
    if bundle.is_empty()
        || PushType::ALL
            .into_iter()
            .any(|p| p.topic_suffix() == Some(bundle))
    {
        return Err(RequestError::EmptyBundleId);
    }
    if !bundle
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(RequestError::BadBundleId(bundle.chars().take(64).collect()));
    }
    Ok(bundle)
}

/// One channel management call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelOp {
    /// `POST /1/apps/<bundle>/channels` with `{"message-storage-policy":N,"push-type":"LiveActivity"}`.
    Create { policy: StoragePolicy },
    /// `GET /1/apps/<bundle>/channels` with `apns-channel-id`.
    Read { channel: ChannelId },
    /// `DELETE /1/apps/<bundle>/channels` with `apns-channel-id`.
    Delete { channel: ChannelId },
    /// `GET /1/apps/<bundle>/all-channels`.
    List,
}

impl ChannelOp {
    pub fn method(&self) -> Method {
        match self {
            ChannelOp::Create { .. } => Method::POST,
            ChannelOp::Read { .. } | ChannelOp::List => Method::GET,
            ChannelOp::Delete { .. } => Method::DELETE,
        }
    }

    /// The `:path` for `bundle` (already stripped of any push-type suffix).
    pub fn path(&self, bundle: &str) -> String {
        match self {
            ChannelOp::List => format!("/1/apps/{bundle}/all-channels"),
            _ => format!("/1/apps/{bundle}/channels"),
        }
    }

    /// The success status APNs answers with.
    pub fn success_status(&self) -> u16 {
        match self {
            ChannelOp::Create { .. } => 201,
            ChannelOp::Delete { .. } => 204,
            ChannelOp::Read { .. } | ChannelOp::List => 200,
        }
    }

    /// The operation's name in logs and metrics: `create`, `read`, `delete`, `list`.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelOp::Create { .. } => "create",
            ChannelOp::Read { .. } => "read",
            ChannelOp::Delete { .. } => "delete",
            ChannelOp::List => "list",
        }
    }

    /// The `apns-channel-id` header, for read and delete.
    pub fn channel_header(&self) -> Option<HeaderValue> {
        match self {
            ChannelOp::Read { channel } | ChannelOp::Delete { channel } => Some(channel.header()),
            _ => None,
        }
    }

    /// The request body (create only).
    pub fn body(&self) -> Bytes {
        match self {
            ChannelOp::Create { policy } => Bytes::from(format!(
                "{{\"message-storage-policy\":{},\"push-type\":\"LiveActivity\"}}",
                policy.as_u8()
            )),
            _ => Bytes::new(),
        }
    }
}

/// One broadcast send: `POST /4/broadcasts/apps/<bundle>` with `apns-channel-id`.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastSend {
    /// The app's bundle id (a push-type suffix is removed, as by [`bundle_for_path`]).
    pub bundle_id: String,
    pub channel: ChannelId,
    /// 10, 5 or 1.
    pub priority: u8,
    /// `apns-expiration` in Unix seconds; only 0 (or none) on a no-storage channel.
    pub expiration: Option<u64>,
    /// `apns-request-id`; APNs assigns one when absent.
    pub request_id: Option<String>,
    pub payload: Bytes,
}

impl BroadcastSend {
    /// Every check herald makes before sending (docs/apns-protocol.md §5.3 rules 1, 2, 9; §6.2). `policy`: the
    /// channel's storage policy when known, to refuse a non-zero expiration on a no-storage channel early.
    pub fn validate(&self, policy: Option<StoragePolicy>) -> Result<(), RequestError> {
        bundle_for_path(&self.bundle_id)?;
        if !matches!(self.priority, 10 | 5 | 1) {
            return Err(RequestError::BadPriority(self.priority));
        }
        if let Some(id) = &self.request_id {
            validate_apns_id(id).map_err(|_| RequestError::BadRequestId(id.clone()))?;
        }
        if policy == Some(StoragePolicy::NoStorage) && self.expiration.is_some_and(|e| e != 0) {
            return Err(RequestError::ExpirationOnNoStorage);
        }
        validate_broadcast(&self.payload)?;
        Ok(())
    }

    /// The `:path`.
    pub fn path(&self) -> Result<String, RequestError> {
        Ok(format!(
            "/4/broadcasts/apps/{}",
            bundle_for_path(&self.bundle_id)?
        ))
    }

    /// The headers other than `authorization`, in a fixed order.
    pub fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, RequestError> {
        let mut h = vec![
            (APNS_CHANNEL_ID.clone(), self.channel.header()),
            (
                APNS_PUSH_TYPE.clone(),
                HeaderValue::from_static("liveactivity"),
            ),
            (
                APNS_PRIORITY.clone(),
                HeaderValue::from(u16::from(self.priority)),
            ),
        ];
        if let Some(e) = self.expiration {
            h.push((APNS_EXPIRATION.clone(), HeaderValue::from(e)));
        }
        if let Some(id) = &self.request_id {
            let v =
                HeaderValue::from_str(id).map_err(|_| RequestError::BadRequestId(id.clone()))?;
            h.push((APNS_REQUEST_ID.clone(), v));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(payload: &str) -> BroadcastSend {
        BroadcastSend {
            bundle_id: "com.example.app.push-type.liveactivity".into(),
            channel: ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap(),
            priority: 10,
            expiration: None,
            request_id: None,
            payload: Bytes::from(payload.to_owned()),
        }
    }

    #[test]
    fn channel_ids_are_base64() {
        assert!(ChannelId::parse("dHN0LXNyY2gtY2hubA==").is_ok());
        assert_eq!(ChannelId::parse(""), Err(RequestError::EmptyChannelId));
        assert!(matches!(
            ChannelId::parse("a b"),
            Err(RequestError::BadChannelId {
                fault: Base64Fault::NotInAlphabet {
                    found: ' ',
                    position: 1
                },
                ..
            })
        ));
        // APNs publishes no size: an id well past the 24 characters seen so far is one all the same.
        let long = "QUJD".repeat(100);
        assert_eq!(ChannelId::parse(&long).map(|c| c.header().len()), Ok(400));
        assert!(ChannelId::parse(&"A".repeat(MAX_CHANNEL_ID_LEN)).is_ok());
    }

    /// The ids APNs and the simulator hand out: base64 of random bytes, standard alphabet, padded (apns.md line 473:
    /// `apns-channel-id` is base64; line 461: no size to assume).
    #[test]
    fn generated_ids_parse() {
        use base64::Engine;
        for len in 1..=40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 251) as u8).collect();
            let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert!(ChannelId::parse(&padded).is_ok(), "{padded}");
            let bare = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
            assert!(ChannelId::parse(&bare).is_ok(), "{bare}");
        }
        assert!(ChannelId::parse("+/+/").is_ok());
    }

    /// apns.md line 505: BadChannelId answers an id that is not properly encoded. Characters of the alphabet laid
    /// out as no base64 text is are refused as well as characters outside it.
    #[test]
    fn ids_that_are_not_laid_out_as_base64_are_refused() {
        let cases = [
            ("A", Base64Fault::StrayCharacter { data: 1 }),
            ("AAAAA", Base64Fault::StrayCharacter { data: 5 }),
            ("A===", Base64Fault::TooMuchPadding { count: 3 }),
            ("====", Base64Fault::TooMuchPadding { count: 4 }),
            ("AAA==", Base64Fault::PaddedLength { len: 5 }),
            ("AA=", Base64Fault::PaddedLength { len: 3 }),
            ("AA=A", Base64Fault::PaddingInside { position: 2 }),
            ("=AAA", Base64Fault::PaddingInside { position: 0 }),
            (
                "AB-_",
                Base64Fault::NotInAlphabet {
                    found: '-',
                    position: 2,
                },
            ),
        ];
        for (id, fault) in cases {
            assert_eq!(
                ChannelId::parse(id),
                Err(RequestError::BadChannelId {
                    id: id.to_owned(),
                    fault
                }),
                "{id}"
            );
        }
        let e = ChannelId::parse("A===").unwrap_err().to_string();
        assert!(
            e.starts_with(r#"channel id "A===" is not base64: it ends in 3 '='"#),
            "{e}"
        );
    }

    /// A too-long id is refused for its length, with the length first and only the start of the id in the text.
    #[test]
    fn a_long_id_is_refused_for_its_length() {
        let id = "A".repeat(5000);
        let e = ChannelId::parse(&id).unwrap_err();
        assert_eq!(
            e,
            RequestError::ChannelIdTooLong {
                id: format!("{}…", "A".repeat(40)),
                len: 5000
            }
        );
        assert_eq!(
            e.to_string(),
            format!(
                "channel id \"{}…\" is 5000 characters long; herald takes at most 4096",
                "A".repeat(40)
            )
        );
        // A character outside the alphabet is what is wrong with a long id that has one.
        let e = ChannelId::parse(&format!("{id}!")).unwrap_err().to_string();
        assert!(e.contains("character '!' at position 5000"), "{e}");
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn management_requests_follow_apple() {
        // docs/apns-protocol.md §6.2, the management table.
        let ch = ChannelId::parse("abc=").unwrap();
        let create = ChannelOp::Create {
            policy: StoragePolicy::MostRecentMessage,
        };
        assert_eq!(create.method(), Method::POST);
        assert_eq!(create.path("com.x"), "/1/apps/com.x/channels");
        assert_eq!(
            &create.body()[..],
            br#"{"message-storage-policy":1,"push-type":"LiveActivity"}"#
        );
        assert_eq!(create.success_status(), 201);
        let read = ChannelOp::Read {
            channel: ch.clone(),
        };
        assert_eq!((read.method(), read.success_status()), (Method::GET, 200));
        assert_eq!(read.channel_header().unwrap(), "abc=");
        let del = ChannelOp::Delete { channel: ch };
        assert_eq!((del.method(), del.success_status()), (Method::DELETE, 204));
        assert_eq!(ChannelOp::List.path("com.x"), "/1/apps/com.x/all-channels");
        assert!(ChannelOp::List.body().is_empty());
    }

    #[test]
    fn bundle_ids_lose_the_live_activity_suffix() {
        assert_eq!(
            bundle_for_path("com.x.push-type.liveactivity").unwrap(),
            "com.x"
        );
        assert_eq!(bundle_for_path("com.x").unwrap(), "com.x");
        assert_eq!(
            bundle_for_path(".push-type.liveactivity"),
            Err(RequestError::EmptyBundleId)
        );
        assert!(bundle_for_path("com/x").is_err());
    }

    /// The path names the app that device pushes of any push type go to (docs/apns-protocol.md#push-types): a topic
    /// ending in another push type's suffix (`.push-type.widgets`, `.voip`, …) loses it as the device path's
    /// `bundle_id` removes it, and each suffix alone is no bundle id.
    #[test]
    fn bundle_ids_lose_any_push_type_suffix_as_device_pushes_do() {
        let b = "com.example.demo.token";
        for p in PushType::ALL {
            let topic = crate::push::topic_for(b, p);
            assert_eq!(bundle_for_path(&topic), Ok(b), "{topic}");
            assert_eq!(bundle_for_path(&topic), Ok(bundle_id(&topic)), "{topic}");
            // The Live Activity topic a device push derives from this domain topic has that same bundle id.
            let live = crate::push::derive_topic(&topic, PushType::LiveActivity);
            assert_eq!(live, format!("{b}.push-type.liveactivity"), "{topic}");
            if let Some(suffix) = p.topic_suffix() {
                assert_eq!(
                    bundle_for_path(suffix),
                    Err(RequestError::EmptyBundleId),
                    "{suffix}"
                );
            }
        }
        let send = BroadcastSend {
            bundle_id: format!("{b}.push-type.widgets"),
            ..send(r#"{"aps":{"event":"update","timestamp":1,"content-state":{}}}"#)
        };
        assert_eq!(send.path(), Ok(format!("/4/broadcasts/apps/{b}")));
        assert_eq!(
            ChannelOp::List.path(bundle_for_path(&send.bundle_id).unwrap()),
            format!("/1/apps/{b}/all-channels")
        );
    }

    #[test]
    fn broadcasts_are_checked_before_sending() {
        let ok = send(r#"{"aps":{"event":"update","timestamp":1,"content-state":{}}}"#);
        ok.validate(None).unwrap();
        assert_eq!(ok.path().unwrap(), "/4/broadcasts/apps/com.example.app");
        let h = ok.headers().unwrap();
        assert_eq!(h[0].0, "apns-channel-id");
        assert_eq!(h[1].1, "liveactivity");
        assert_eq!(h[2].1, "10");

        let start = send(
            r#"{"aps":{"event":"start","timestamp":1,"alert":"x","attributes-type":"A","attributes":{}}}"#,
        );
        assert_eq!(
            start.validate(None),
            Err(RequestError::Payload(PayloadError::BroadcastStart))
        );
        let mut low = ok.clone();
        low.priority = 1;
        low.validate(None).unwrap();
        low.priority = 7;
        assert_eq!(low.validate(None), Err(RequestError::BadPriority(7)));
        let mut exp = ok.clone();
        exp.expiration = Some(1_900_000_000);
        exp.validate(Some(StoragePolicy::MostRecentMessage))
            .unwrap();
        assert_eq!(
            exp.validate(Some(StoragePolicy::NoStorage)),
            Err(RequestError::ExpirationOnNoStorage)
        );
        let big = send(&format!(
            r#"{{"aps":{{"event":"update","timestamp":1,"content-state":{{"s":"{}"}}}}}}"#,
            "x".repeat(5000)
        ));
        big.validate(None).unwrap();
        let too_big = send(&format!(
            r#"{{"aps":{{"event":"update","timestamp":1,"content-state":{{"s":"{}"}}}}}}"#,
            "x".repeat(5100)
        ));
        assert!(matches!(
            too_big.validate(None),
            Err(RequestError::Payload(PayloadError::BroadcastTooLarge {
                limit: 5120,
                ..
            }))
        ));
        let no_ts = send(r#"{"aps":{"event":"update"}}"#);
        let err = no_ts.validate(None).unwrap_err().to_string();
        assert!(err.contains("timestamp"), "{err}");
    }

    #[test]
    fn storage_policy_json() {
        assert_eq!(
            serde_json::to_string(&StoragePolicy::MostRecentMessage).unwrap(),
            "1"
        );
        assert_eq!(
            serde_json::from_str::<StoragePolicy>("0").unwrap(),
            StoragePolicy::NoStorage
        );
        assert!(serde_json::from_str::<StoragePolicy>("2").is_err());
    }
}
