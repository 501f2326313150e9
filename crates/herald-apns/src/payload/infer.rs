//! Which push type a notification implies when the sender named none: [`infer_push_type_for`], from the topic's
//! suffix first and then from the payload ([`infer_push_type`], read without building the payload's JSON tree).

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};

use crate::push::PushType;

/// The push type of a notification whose sender named none (docs/apns-protocol.md#push-types): the one the suffix
/// of its `topic` names (`.voip` is `voip`, `.push-type.liveactivity` is `liveactivity`, …,
/// [`PushType::from_topic_suffix`]), else the one its payload implies ([`infer_push_type`]). `topic` is the topic
/// the notification will carry as far as it is known: the sender's, else the domain's.
///
/// The topic comes first because it is what APNs routes by: a VoIP payload (`{"callId":…}`, no `aps`) to a `.voip`
/// topic sent as `alert` would be refused for lacking `aps`, held to 4096 bytes instead of 5120, and go to APNs with
/// a push type its topic contradicts. The one-word suffixes (`.voip`, `.voip-ptt`, `.complication`) may also end a
/// bundle id itself (`com.example.voip`): a payload that shows something (`aps` with `alert`, `badge` or `sound`) to
/// such a topic is taken for an alert to that app, as it was before topics were read; the multi-word suffixes
/// (`.push-type.liveactivity`, `.pushkit.fileprovider`, …) end no bundle id and always decide.
pub fn infer_push_type_for(topic: Option<&str>, payload: &[u8]) -> PushType {
    match topic.and_then(PushType::from_topic_suffix) {
        Some(PushType::Voip | PushType::PushToTalk | PushType::Complication)
            if shows_something(payload) =>
        {
            infer_push_type(payload)
        }
        Some(suffixed) => suffixed,
        None => infer_push_type(payload),
    }
}

/// Whether the payload's (last) `aps` is an object with `alert`, `badge` or `sound`.
fn shows_something(payload: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Root>(payload), Ok(Root(Some(aps))) if aps.visible)
}

/// The push type a payload implies when the sender named none (Momentum's binary-era submissions have no
/// push type): `background` for a `content-available`-only `aps`, otherwise `alert`. Unparseable payloads
/// give `alert`, and [`validate`] then says what is wrong with them. A Live Activity is never inferred: a sender
/// names push type `liveactivity` (or sends to a `.push-type.liveactivity` topic, [`infer_push_type_for`]), and an
/// `aps` that only looks like one (`event` and `timestamp`, nothing to show) is refused as an alert over HTTP/2
/// with a text that says so ([`PayloadError::AlertLooksLikeLiveActivity`]).
///
/// It answers as a reading into a serde_json `Value` would (a repeated key: the last one counts), without building
/// one for the usual answer: only `aps`'s keys are looked at and every other value is skipped. Skipping does not
/// check everything a `Value` reading refuses (invalid UTF-8 or a lone surrogate in a string, a number out of
/// range, nesting deeper than 128), so a `background` answer, the rare one, is confirmed by that reading.
///
/// [`validate`]: crate::payload::validate
/// [`PayloadError::AlertLooksLikeLiveActivity`]: crate::payload::PayloadError::AlertLooksLikeLiveActivity
pub fn infer_push_type(payload: &[u8]) -> PushType {
    match serde_json::from_slice::<Root>(payload) {
        Ok(Root(Some(aps)))
            if aps.is_content_available_only()
                && serde_json::from_slice::<serde_json::Value>(payload).is_ok() =>
        {
            PushType::Background
        }
        _ => PushType::Alert,
    }
}

/// A payload's root object as [`infer_push_type`] reads it: what its (last) `aps` holds, `None` without one.
struct Root(Option<ApsKeys>);

/// What an `aps` value says about the push type: `None` in [`Root`] when `aps` is not an object.
#[derive(Default)]
struct ApsKeys {
    /// The (last) `content-available` is the integer 1.
    content_available: bool,
    /// `alert`, `badge` or `sound` is present.
    visible: bool,
}

impl ApsKeys {
    fn is_content_available_only(&self) -> bool {
        self.content_available && !self.visible
    }
}

/// The keys [`infer_push_type`] tells apart, read without allocating.
#[derive(serde::Deserialize)]
#[serde(field_identifier)]
enum Key {
    #[serde(rename = "aps")]
    Aps,
    #[serde(rename = "content-available")]
    ContentAvailable,
    #[serde(rename = "alert", alias = "badge", alias = "sound")]
    Visible,
    #[serde(other)]
    Other,
}

impl<'de> de::Deserialize<'de> for Root {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Root, D::Error> {
        struct RootVisitor;
        impl<'de> Visitor<'de> for RootVisitor {
            type Value = Root;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Root, A::Error> {
                let mut aps = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Aps => aps = map.next_value::<MaybeAps>()?.0,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Root(aps))
            }
        }
        deserializer.deserialize_map(RootVisitor)
    }
}

/// An `aps` value of any JSON type: its keys when it is an object.
struct MaybeAps(Option<ApsKeys>);

impl<'de> de::Deserialize<'de> for MaybeAps {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<MaybeAps, D::Error> {
        struct ApsVisitor;
        impl<'de> Visitor<'de> for ApsVisitor {
            type Value = MaybeAps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeAps, A::Error> {
                let mut keys = ApsKeys::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ContentAvailable => {
                            keys.content_available = map.next_value::<IsOne>()?.0;
                        }
                        Key::Visible => {
                            keys.visible = true;
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        Key::Aps | Key::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(MaybeAps(Some(keys)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeAps, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(MaybeAps(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeAps, E> {
                Ok(MaybeAps(None))
            }
        }
        deserializer.deserialize_any(ApsVisitor)
    }
}

/// Whether a value is the integer 1 (what `serde_json::Value::as_u64` reads as `Some(1)`); any other value is skipped.
struct IsOne(bool);

impl<'de> de::Deserialize<'de> for IsOne {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<IsOne, D::Error> {
        struct OneVisitor;
        impl<'de> Visitor<'de> for OneVisitor {
            type Value = IsOne;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<IsOne, E> {
                Ok(IsOne(v == 1))
            }
            fn visit_i64<E>(self, v: i64) -> Result<IsOne, E> {
                Ok(IsOne(v == 1))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IsOne, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(IsOne(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IsOne, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(IsOne(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IsOne, E> {
                Ok(IsOne(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsOne, E> {
                Ok(IsOne(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsOne, E> {
                Ok(IsOne(false))
            }
            fn visit_unit<E>(self) -> Result<IsOne, E> {
                Ok(IsOne(false))
            }
        }
        deserializer.deserialize_any(OneVisitor)
    }
}
