//! Differential fuzz target: `herald_apns::payload::infer_push_type` against the reading through
//! `serde_json::Value` it documents ("reads the payload as serde_json would into a Value"): `background` when the
//! (last) `aps` is an object whose (last) `content-available` is the integer 1 and that has no `alert`, `badge` or
//! `sound`; `alert` otherwise, including for anything serde_json refuses. A disagreement is a crash.
#![no_main]

use herald_apns::payload::infer_push_type;
use herald_apns::push::PushType;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn model(bytes: &[u8]) -> PushType {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(root)) => match root.get("aps") {
            Some(Value::Object(aps))
                if aps.get("content-available").and_then(Value::as_u64) == Some(1)
                    && !["alert", "badge", "sound"]
                        .iter()
                        .any(|k| aps.contains_key(*k)) =>
            {
                PushType::Background
            }
            _ => PushType::Alert,
        },
        _ => PushType::Alert,
    }
}

fuzz_target!(|data: &[u8]| {
    let got = infer_push_type(data);
    let want = model(data);
    assert_eq!(
        got,
        want,
        "infer_push_type disagrees with the Value reading; serde_json says {:?}",
        serde_json::from_slice::<Value>(data)
            .err()
            .map(|e| e.to_string())
    );
});
