//! Fuzz target: a message received in SMTP DATA (after dot-unstuffing) read as MCMT by
//! `herald::inbound::mcmt::parse`. Any bytes must give `Parsed` or an `McmtError`, never a panic, a hang or
//! unbounded memory. A message that parses is turned into submissions for two recipients, and every submission goes
//! through the intake's door checks on both protocols, as the ESMTP session does.
#![no_main]

mod common;

use herald::inbound::mcmt::{self, Parsed};
use herald_apns::push::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Mcmt(message)) = mcmt::parse(data) else {
        return;
    };
    assert!(
        !message.push_parts.is_empty(),
        "Ok(Mcmt) without a push part"
    );
    let recipients = [
        "a@b.example".to_string(),
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff@apps.example".to_string(),
    ];
    let subs = message.submissions(&recipients, "from@x.example");
    assert_eq!(subs.len(), recipients.len() * message.push_parts.len());
    for p in &message.push_parts {
        assert!(
            !p.payload.is_empty(),
            "part {}: empty payload accepted",
            p.number
        );
    }
    for s in &subs {
        let sub = &s.submission;
        for protocol in [Protocol::Http2, Protocol::Binary] {
            common::door_checks(
                &sub.token,
                &sub.headers,
                &sub.payload,
                protocol,
                Some("com.example.app"),
            );
        }
    }
});
