//! Fuzz target: the body of `POST /v1.0/inject` through everything `inject_batch` and `recipient_notifications` do
//! before the intake (crates/herald/src/inbound/rest/inject.rs): the JSON body (the handler's private request type is
//! declared again here with the same fields; keep them in step), `describe_json_error` on a body that does not
//! parse, the template parsed once, rendered per recipient with its keys (plus `to` and `from`), the result read
//! as MCMT, the submissions built and each one put through the door checks.
#![no_main]

mod common;

use std::borrow::Cow;
use std::collections::HashMap;

use herald::inbound::mcmt::{self, Parsed};
use herald::inbound::rest::error::describe_json_error;
use herald::inbound::rest::template::Template;
use herald_apns::push::Protocol;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
struct InjectBody {
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    recipients: Option<Vec<Recipient>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Recipient {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    keys: Option<Map<String, Value>>,
    #[serde(default)]
    vctx: Option<Map<String, Value>>,
}

/// inject.rs's `key_text`.
fn key_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let request: InjectBody = match serde_json::from_slice(data) {
        Ok(r) => r,
        Err(first) => {
            let _ = describe_json_error::<InjectBody>(data, first);
            return;
        }
    };
    let (Some(template), Some(recipients)) = (request.template.as_deref(), request.recipients)
    else {
        return;
    };
    let template = Template::parse(template);
    for recipient in recipients.iter().take(4) {
        let Some(to) = recipient.to.as_deref() else {
            continue;
        };
        if !to.contains('@') {
            continue;
        }
        let from = recipient.from.as_deref().unwrap_or("");
        let keys: HashMap<String, Cow<'_, str>> = recipient
            .keys
            .iter()
            .flatten()
            .map(|(k, v)| (k.to_lowercase(), key_text(v)))
            .collect();
        let Ok(message) = template.render(|key| match keys.get(key) {
            Some(v) => Some(Cow::Borrowed(v.as_ref())),
            None if key == "to" => Some(Cow::Borrowed(to)),
            None if key == "from" => Some(Cow::Borrowed(from)),
            None => None,
        }) else {
            continue;
        };
        let Ok(Parsed::Mcmt(mcmt)) = mcmt::parse(message.as_bytes()) else {
            continue;
        };
        for p in mcmt.submissions(&[to.to_owned()], from) {
            let s = &p.submission;
            common::door_checks(
                &s.token,
                &s.headers,
                &s.payload,
                Protocol::Http2,
                Some("com.example.app"),
            );
        }
    }
});
