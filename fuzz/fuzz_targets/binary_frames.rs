//! Fuzz target: the binary protocol as its peers write it. The first byte picks a piece size; the rest is fed in
//! pieces of that size to the notification decoder (what the simulator's gateway reads from a client: commands 0, 1
//! and 2) and to the feedback decoder (what herald reads from a feedback service), and its first six bytes are read
//! as an error packet (what herald reads from a gateway).
//!
//! Checks: reading in pieces gives the same notifications, tuples and fault as reading the whole input at once; a
//! decoded notification or tuple encodes to bytes that decode to it again; a decoded error packet keeps its
//! identifier, and a known status encodes to the bytes it was read from.
#![no_main]

use bytes::BytesMut;
use herald_apns::binary::{
    self, DecoderLimits, ErrorPacket, FeedbackDecoder, NotificationDecoder, Status,
};
use libfuzzer_sys::fuzz_target;

/// Everything one decoder yields from `data` fed `piece` bytes at a time, and the fault that stopped it.
fn drain<T, E>(
    data: &[u8],
    piece: usize,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Vec<T>, Option<E>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn limits(selector: u8) -> DecoderLimits {
    if selector & 0x80 == 0 {
        DecoderLimits::default()
    } else {
        // Wider limits than APNs' (the simulator uses the defaults): tokens of 1 to 100 bytes, payloads to 4096.
        DecoderLimits {
            min_token_len: 1,
            max_token_len: 100,
            max_payload_len: 4096,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(selector & 0x3f) + 1;

    let mut whole = NotificationDecoder::new(limits(selector));
    let mut pieces = NotificationDecoder::new(limits(selector));
    let (all, all_err) = drain(data, data.len().max(1), |b| whole.decode(b));
    let (some, some_err) = drain(data, piece, |b| pieces.decode(b));
    assert_eq!(all, some, "notifications differ when read in pieces of {piece}");
    assert_eq!(all_err, some_err, "fault differs when read in pieces of {piece}");
    for decoded in &all {
        let mut out = BytesMut::new();
        binary::encode(&decoded.notification, decoded.format, &mut out)
            .expect("a decoded notification fits the length fields");
        let mut again = NotificationDecoder::new(limits(selector));
        let back = again.decode(&mut out).expect("re-encoded notification decodes");
        assert_eq!(back.as_ref(), Some(decoded));
        assert!(out.is_empty(), "re-encoded notification left {} bytes", out.len());
    }
    if all_err.is_none() {
        // The stream ends here: what is left is a truncated notification, or nothing.
        let mut leftover = BytesMut::from(data);
        let mut d = NotificationDecoder::new(limits(selector));
        while let Ok(Some(_)) = d.decode(&mut leftover) {}
        if let Some(fault) = d.finish(&leftover) {
            assert!(!leftover.is_empty(), "a fault at the end of an empty rest: {fault}");
        }
    }

    let (tuples, tuple_err) = drain(data, data.len().max(1), |b| FeedbackDecoder::new().decode(b));
    let (tuples_p, tuple_err_p) = drain(data, piece, |b| FeedbackDecoder::new().decode(b));
    assert_eq!(tuples, tuples_p, "feedback tuples differ when read in pieces of {piece}");
    assert_eq!(tuple_err, tuple_err_p);
    for t in &tuples {
        let mut out = BytesMut::new();
        t.encode(&mut out).expect("a decoded tuple fits the length field");
        let back = FeedbackDecoder::new().decode(&mut out).expect("re-encoded tuple decodes");
        assert_eq!(back.as_ref(), Some(t));
    }

    if let Some(six) = data.get(..6) {
        if let Ok(packet) = ErrorPacket::decode(six) {
            assert_eq!(packet.identifier, u32::from_be_bytes([six[2], six[3], six[4], six[5]]));
            if packet.status != Status::Unknown {
                assert_eq!(&packet.encode()[..], six);
            }
        }
    }
    let _ = ErrorPacket::decode(data);
});
