//! Fuzz target: the APNs request attributes a sender gives as text (`herald_apns::push`, `herald_apns::token_hex`):
//! push type, priority, topic, collapse id, apns-id, expiration and device token, each read from one field of the
//! input (fields separated by NUL bytes). Checks that nothing panics and that what is accepted prints back as given.
#![no_main]

mod common;

use herald_apns::push::{self, ApnsId, Priority, PushType};
use herald_apns::token_hex::{self, DeviceToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 0, 7);
    let text = |i: usize| String::from_utf8_lossy(f[i]).into_owned();
    let push_type = text(0).parse::<PushType>().ok();
    if let Some(t) = push_type {
        assert_eq!(t.as_str(), text(0));
    }
    if let Ok(p) = text(1).parse::<Priority>() {
        assert_eq!(p.as_str(), text(1));
        assert_eq!(Priority::from_u8(p.as_u8()).ok(), Some(p));
    }
    let topic = text(2);
    for t in PushType::ALL {
        if let Ok(bundle) = push::validate_topic(&topic, t) {
            assert_eq!(push::topic_for(bundle, t), topic);
        }
    }
    let collapse = text(3);
    if push::validate_collapse_id(&collapse).is_ok() {
        assert!(collapse.len() <= push::MAX_COLLAPSE_ID_BYTES);
    }
    let id = text(4);
    let canonical = push::validate_canonical_apns_id(&id).is_ok();
    if let Ok(parsed) = id.parse::<ApnsId>() {
        assert_eq!(parsed.to_string(), id);
        assert_eq!(
            ApnsId::from_bytes(*parsed.as_bytes()).to_string(),
            id.to_ascii_lowercase()
        );
    } else {
        assert!(!canonical, "a canonical apns-id does not parse: {id:?}");
    }
    if let Ok(e) = push::parse_expiration(&text(5)) {
        let _ = push::validate_expiration(e);
    }
    let token = text(6);
    match DeviceToken::from_hex(&token) {
        Ok(d) => {
            assert_eq!(d.to_hex(), token.to_ascii_lowercase());
            assert_eq!(d.to_string(), d.to_hex());
            assert_eq!(token_hex::validate_hex(&token), Ok(d.len()));
            let _ = d.redacted().to_string();
            let _ = (d.check_apns(), d.check_binary());
        }
        Err(e) => {
            assert!(token_hex::validate_hex(&token).is_err());
            let _ = e.to_string();
        }
    }
});
