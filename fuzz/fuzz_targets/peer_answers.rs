//! Fuzz target: text herald reads from peers and operators outside the notification path, one field each
//! (fields separated by NUL bytes): an APNs error body (`herald_apns::reason::parse_error_body`), a provider token as
//! the simulator reads it from a client (`provider_token::decode_unverified`), a console command line
//! (`herald::control::commands::parse`), a `POST /api/v1/broadcast` body (`herald::broadcasts::api::parse`), a
//! channel id (`ChannelId::parse`) and a status id as `GET /api/v1/notifications/{id}` and the console's `status` read it
//! (`herald::outcomes::parse_id`).
//!
//! Checks: nothing panics; a status id that parses prints back as given (ids are written in uppercase hex and
//! read in either case); a channel id that parses prints back as given.
#![no_main]

mod common;

use herald::outcomes::{id_of, parse_id};
use herald_apns::broadcast::request::ChannelId;
use herald_apns::{provider_token, reason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 0, 6);
    let text = |i: usize| String::from_utf8_lossy(f[i]).into_owned();

    if let Ok(body) = reason::parse_error_body(f[0]) {
        let _ = body.known_reason();
    }
    let _ = provider_token::decode_unverified(&text(1));
    let _ = herald::control::commands::parse(&text(2));
    let _ = herald::broadcasts::api::parse(f[3]);
    let channel = text(4);
    if let Ok(id) = ChannelId::parse(&channel) {
        assert_eq!(id.to_string(), channel);
    }
    let status = text(5);
    if let Some(key) = parse_id(&status) {
        assert_eq!(id_of(&key).to_string(), status.to_ascii_uppercase(), "status id {status:?}");
    }
});
