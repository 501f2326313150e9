//! Fuzz target: the body of `POST /api/v1/push` through what the handler does before the intake
//! (crates/herald/src/inbound/rest/push.rs): `push::parse` (with `describe_json_error`'s second, path-tracking parse
//! on a body that does not parse), the domain and binding checks, the submissions built from the tokens or the
//! notifications, and each one through the intake's door checks. Answers are checked to read back through
//! serde_json as `push_json_string` writes them.
#![no_main]

mod common;

use herald::inbound::rest::error::push_json_string;
use herald::inbound::rest::push;
use herald_apns::push::Protocol;
use libfuzzer_sys::fuzz_target;

fn json_string_round_trips(s: &str) {
    let mut out = String::new();
    push_json_string(&mut out, s);
    let back: String = serde_json::from_str(&out).expect("push_json_string wrote invalid JSON");
    assert_eq!(back, s);
}

fuzz_target!(|data: &[u8]| {
    let request = match push::parse(data) {
        Ok(r) => r,
        Err(e) => {
            json_string_round_trips(&e.message);
            return;
        }
    };
    let domain = match request.domain() {
        Ok(d) => d,
        Err(e) => {
            json_string_round_trips(&e.message);
            "apps.example.com"
        }
    };
    json_string_round_trips(domain);
    let binding = request.binding().unwrap_or(None);
    let submissions = match request.submissions(domain, &binding) {
        Ok(s) => s,
        Err(e) => {
            json_string_round_trips(&e.message);
            return;
        }
    };
    assert_eq!(submissions.len(), request.count());
    for s in submissions.iter().take(8) {
        json_string_round_trips(&s.token);
        common::door_checks(&s.token, &s.headers, &s.payload, Protocol::Http2, None);
    }
});
