//! Fuzz target: records herald reads back from its own storage, where a torn write, a bad disk or an older or newer
//! version may have left anything: spool records (`StoredNotification`, `Schedule`; on disk and in the JetStream
//! stream), status-book records (`herald::outcomes::codec`) and node heartbeats from the JetStream key-value bucket
//! (`NodeBeat`). The first 16 bytes are the record's key; the rest is read as each record kind, once as given and
//! once with its version byte and checksum made right, so the fuzzer reaches the body readers behind the checksum.
//!
//! Checks: nothing panics; what decodes encodes to a record that decodes to the same value.
#![no_main]

use herald::outcomes::codec;
use herald_spool::{NodeBeat, RECORD_VERSION, Schedule, SpoolKey, StoredNotification};
use libfuzzer_sys::fuzz_target;

/// `body` sealed as a spool record under `key`: version byte, CRC-32 of key, version and body, then the body
/// (the layout `StoredNotification::encode` writes, crates/herald-spool/src/record.rs).
fn sealed(key: SpoolKey, body: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.0.to_be_bytes());
    h.update(&[RECORD_VERSION]);
    h.update(body);
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((key, body)) = data.split_first_chunk::<16>() else {
        return;
    };
    let key = SpoolKey(u128::from_be_bytes(*key));

    for value in [body.to_vec(), sealed(key, body)] {
        if let Ok(n) = StoredNotification::decode(key, &value) {
            let again = StoredNotification::decode(n.key, &n.encode()).expect("an encoded record decodes");
            assert_eq!(again, n);
        }
    }
    if let Ok(s) = Schedule::decode(key, body) {
        assert_eq!(Schedule::decode(key, &s.encode(key)), Ok(s));
    }

    let _ = codec::decode(body);
    let _ = codec::decode(data);

    if let Ok(text) = std::str::from_utf8(body) {
        if let Some(beat) = NodeBeat::decode(text) {
            assert_eq!(NodeBeat::decode(&beat.encode()), Some(beat));
        }
    }
});
