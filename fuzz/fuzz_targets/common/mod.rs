//! Shared by the targets: the checks herald's intake applies to one submission once its domain is known
//! (`Intake::validate` in crates/herald/src/inbound/accept.rs, without the domain settings, which need a running
//! engine), and a splitter that turns one fuzz input into several fields.
#![allow(dead_code)]

use herald_apns::notification::{NotificationParts, PushHeaders, validate_notification};
use herald_apns::payload::infer_push_type;
use herald_apns::push::{ApnsId, Priority, Protocol, PushType, validate_expiration};

/// Runs the door checks on a token, its headers and payload, over `protocol`, with `default_topic` standing for
/// the domain's `apn_topic`. Checks what is cheap to state about the result: a token that passes prints back as
/// the lowercase of what was given, an apns-id that passes prints back as given.
pub fn door_checks(
    token: &str,
    headers: &PushHeaders,
    payload: &[u8],
    protocol: Protocol,
    default_topic: Option<&str>,
) {
    let push_type = match headers.push_type.as_deref() {
        Some(t) => match t.parse::<PushType>() {
            Ok(p) => p,
            Err(_) => return,
        },
        None => infer_push_type(payload),
    };
    let priority = match headers.priority {
        Some(p) => match Priority::from_u8(p) {
            Ok(p) => p,
            Err(_) => return,
        },
        None => push_type.default_priority(),
    };
    let parts = NotificationParts {
        token,
        headers,
        default_topic,
        push_type,
        priority,
        protocol,
        payload,
    };
    let _ = parts.topic();
    let Ok(device) = validate_notification(&parts) else {
        return;
    };
    assert_eq!(device.to_hex(), token.to_ascii_lowercase());
    if let Some(e) = headers.expiration {
        validate_expiration(e)
            .expect("validate_notification passed an expiration validate_expiration refuses");
    }
    if let Some(id) = headers.apns_id.as_deref() {
        // accept.rs parses the id after validate_notification passed it.
        let parsed: ApnsId = id
            .parse()
            .expect("validate_notification passed an apns-id that does not parse");
        assert_eq!(parsed.to_string(), id);
    }
}

/// Splits `data` at the first `n - 1` occurrences of `sep`; missing fields are empty.
pub fn fields(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == sep).collect();
    out.resize(n, &[]);
    out
}
