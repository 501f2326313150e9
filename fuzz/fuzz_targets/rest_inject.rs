//! Fuzz target: the body of `POST /v1.0/inject` through everything the handler does before the intake
//! (crates/herald/src/inbound/rest/inject.rs): `inject::parse` (with `describe_json_error` on a body that does not
//! parse), the template parsed once, and per recipient `recipient_submissions` (the template rendered with its keys
//! plus `to` and `from`, the result read as MCMT, a submission per push part), each submission through the door
//! checks.
#![no_main]

mod common;

use herald::inbound::rest::inject;
use herald::inbound::rest::template::Template;
use herald_apns::push::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = inject::parse(data) else {
        return;
    };
    let (Some(template), Some(recipients)) = (request.template.as_deref(), &request.recipients)
    else {
        return;
    };
    let template = Template::parse(template);
    for recipient in recipients.iter().take(4) {
        let Ok(parts) = inject::recipient_submissions(&template, recipient) else {
            continue;
        };
        for p in parts {
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
