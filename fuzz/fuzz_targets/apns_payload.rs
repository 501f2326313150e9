//! Fuzz target: APNs payload validation (`herald_apns::payload`). The first byte picks the push type (of the 11), the
//! second the protocol (bit 0) and priority (10, 5 or 1); the rest is the payload. `validate`, `validate_broadcast`,
//! `infer_push_type` must answer for any bytes without panicking. Their reading of the JSON is also checked against
//! serde_json's (see below).
#![no_main]

use herald_apns::payload::{self, PayloadError};
use herald_apns::push::{Priority, Protocol, PushType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [t, p, payload @ ..] = data else {
        return;
    };
    let push_type = PushType::ALL[usize::from(*t) % PushType::ALL.len()];
    let protocol = if p & 1 == 0 {
        Protocol::Http2
    } else {
        Protocol::Binary
    };
    let priority =
        [Priority::Immediate, Priority::Conserve, Priority::Low][usize::from(p >> 1) % 3];

    let result = payload::validate(payload, push_type, protocol, priority);
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    if result.is_ok() {
        assert!(payload.len() <= push_type.payload_limit(protocol));
    }
    let broadcast = payload::validate_broadcast(payload);
    if let Err(e) = &broadcast {
        let _ = e.to_string();
    }
    let inferred = payload::infer_push_type(payload);
    let _ = payload::validate(payload, inferred, protocol, inferred.default_priority());

    // The strict reading (private, payload/strict.rs) is serde_json's parser with repeated keys refused: what it
    // accepts, serde_json accepts, and what it calls invalid JSON, serde_json refuses.
    let plain = serde_json::from_slice::<serde_json::Value>(payload);
    for (what, r) in [("validate", &result), ("validate_broadcast", &broadcast)] {
        match r {
            Ok(()) => assert!(
                matches!(plain, Ok(serde_json::Value::Object(_))),
                "{what} accepted a payload serde_json reads as {plain:?}"
            ),
            Err(PayloadError::InvalidJson { detail }) => assert!(
                plain.is_err(),
                "{what} calls the payload invalid JSON ({detail}) but serde_json reads it"
            ),
            Err(_) => {}
        }
    }
});
