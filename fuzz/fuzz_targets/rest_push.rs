//! Fuzz target: the body of `POST /api/v1/push`. The handler's request type is private to
//! crates/herald/src/inbound/rest/push.rs, so this target declares the same fields with the same serde attributes
//! (keep them in step) and uses herald's own pieces around it: `Text` for string fields, `describe_json_error` for a
//! body that does not parse (the second, path-tracking parse), `push_json_string` for answers (checked to read back
//! through serde_json), and the intake's door checks for each item as `accept_batch` builds it.
#![no_main]

mod common;

use herald::inbound::rest::error::{describe_json_error, push_json_string};
use herald::inbound::rest::text::Text;
use herald_apns::notification::PushHeaders;
use herald_apns::push::Protocol;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PushBody<'a> {
    #[serde(borrow, default)]
    domain: Option<Text<'a>>,
    #[serde(borrow, default)]
    tokens: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    notifications: Option<Vec<Item<'a>>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    topic: Option<Text<'a>>,
    #[serde(borrow, default)]
    push_type: Option<Text<'a>>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    expiration: Option<u64>,
    #[serde(borrow, default)]
    collapse_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    binding: Option<Text<'a>>,
}

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
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    expiration: Option<u64>,
    #[serde(borrow, default)]
    collapse_id: Option<Text<'a>>,
}

fn json_string_round_trips(s: &str) {
    let mut out = String::new();
    push_json_string(&mut out, s);
    let back: String = serde_json::from_str(&out).expect("push_json_string wrote invalid JSON");
    assert_eq!(back, s);
}

fn owned(t: &Option<Text<'_>>) -> Option<String> {
    t.as_deref().map(str::to_owned)
}

fn either(own: &Option<Text<'_>>, default: &Option<Text<'_>>) -> Option<String> {
    own.as_deref().or(default.as_deref()).map(str::to_owned)
}

fuzz_target!(|data: &[u8]| {
    let request = match serde_json::from_slice::<PushBody<'_>>(data) {
        Ok(r) => r,
        Err(first) => {
            let message = describe_json_error::<PushBody<'_>>(data, first);
            json_string_round_trips(&message);
            return;
        }
    };
    if let Some(d) = &request.domain {
        json_string_round_trips(d);
    }
    if let (Some(tokens), Some(payload)) = (&request.tokens, request.payload) {
        let headers = PushHeaders {
            topic: owned(&request.topic),
            push_type: owned(&request.push_type),
            priority: request.priority,
            expiration: request.expiration,
            collapse_id: owned(&request.collapse_id),
            apns_id: None,
        };
        for token in tokens.iter().take(8) {
            json_string_round_trips(token);
            common::door_checks(
                token,
                &headers,
                payload.get().as_bytes(),
                Protocol::Http2,
                None,
            );
        }
    }
    if let Some(items) = &request.notifications {
        for item in items.iter().take(8) {
            let headers = PushHeaders {
                topic: either(&item.topic, &request.topic),
                push_type: either(&item.push_type, &request.push_type),
                priority: item.priority.or(request.priority),
                expiration: item.expiration.or(request.expiration),
                collapse_id: either(&item.collapse_id, &request.collapse_id),
                apns_id: owned(&item.apns_id),
            };
            common::door_checks(
                &item.token,
                &headers,
                item.payload.get().as_bytes(),
                Protocol::Http2,
                None,
            );
        }
    }
});
