//! The on-disk record format of a spooled notification and of its delivery schedule.
//!
//! A record value is `version (1 byte) | crc32 (4 bytes, LE) | body`. The checksum covers the record's key, the
//! version byte and the body, so a torn or corrupted value, or a value stored under the wrong key, is detected on
//! recovery. Every version keeps this frame, so that a build tells a record it cannot read because a newer herald
//! wrote it (checksum right; a greater version, a presence flag or a trailing field it does not know: see
//! [`DecodeError::is_newer_format`]) from a damaged one (checksum or structure wrong): recovery keeps the first for
//! the newer herald and deletes the second. Version 1 body, in order: domain, token, a presence-flags byte, the optional topic, push type,
//! priority, expiration, collapse id, apns-id and binding, then payload, sender, recipient, received_at, batch_id, conn_id,
//! retries, next_attempt_ms. Strings and byte strings are a LEB128 length then the bytes; integers are
//! little-endian of fixed width. The binding (flag 64) is written only for a notification delivered from a binding
//! other than `default`, so such records are byte for byte what earlier builds wrote, and their records read here
//! as the default binding.
//!
//! A schedule value (written by a reschedule, so the record itself is never rewritten) is
//! `version | retries u32 | next_attempt_ms u64 | crc32`, the checksum covering key and the 13 bytes before it.

use crate::key::SpoolKey;

/// The record format this build writes.
pub const RECORD_VERSION: u8 = 1;
/// Length of an encoded [`Schedule`].
pub const SCHEDULE_LEN: usize = 17;

/// One notification as the spool keeps it: what APNs needs, where it came from, and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    pub key: SpoolKey,
    /// The domain (app) that routes it.
    pub domain: String,
    /// The device token, raw bytes.
    pub token: Vec<u8>,
    pub topic: Option<String>,
    pub push_type: Option<String>,
    pub priority: Option<u8>,
    /// APNs expiration, epoch seconds.
    pub expiration: Option<u32>,
    pub collapse_id: Option<String>,
    pub apns_id: Option<String>,
    /// The binding it is delivered from; `None` is the `default` binding.
    pub binding: Option<String>,
    /// The JSON payload, byte for byte as accepted.
    pub payload: Vec<u8>,
    /// Envelope sender and recipient as received.
    pub sender: String,
    pub recipient: String,
    /// Reception time, epoch seconds.
    pub received_at: u64,
    /// The inbound batch and connection it arrived in (0: none).
    pub batch_id: u128,
    pub conn_id: u128,
    /// Transient failures so far.
    pub retries: u32,
    /// Epoch milliseconds of the next attempt; 0 means ready now.
    pub next_attempt_ms: u64,
}

/// The delivery state a reschedule writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub retries: u32,
    pub next_attempt_ms: u64,
}

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("unknown record version {0} (this build reads version {RECORD_VERSION})")]
    UnknownVersion(u8),
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("truncated in field {0}")]
    Truncated(&'static str),
    #[error("field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("field {0} has an invalid length")]
    BadLength(&'static str),
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("unknown presence flags {0:#04x}")]
    BadFlags(u8),
}

impl DecodeError {
    /// True when the record is intact (its checksum is right) but written by a newer herald: a greater format
    /// version, a presence flag or fields after the last one this build knows. Such a record is kept for that
    /// herald, neither delivered nor deleted. Every other error means the record is damaged or torn. Meaningful for
    /// [`StoredNotification::decode`], which checks the checksum before anything else.
    pub fn is_newer_format(&self) -> bool {
        match self {
            DecodeError::UnknownVersion(v) => *v > RECORD_VERSION,
            DecodeError::BadFlags(_) | DecodeError::TrailingBytes(_) => true,
            DecodeError::Empty
            | DecodeError::Checksum { .. }
            | DecodeError::Truncated(_)
            | DecodeError::InvalidUtf8(_)
            | DecodeError::BadLength(_) => false,
        }
    }
}

const HAS_TOPIC: u8 = 1;
const HAS_PUSH_TYPE: u8 = 2;
const HAS_PRIORITY: u8 = 4;
const HAS_EXPIRATION: u8 = 8;
const HAS_COLLAPSE_ID: u8 = 16;
const HAS_APNS_ID: u8 = 32;
const HAS_BINDING: u8 = 64;
const ALL_FLAGS: u8 = 127;
const HEADER_LEN: usize = 5;

fn checksum(key: SpoolKey, version: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_be_bytes());
    h.update(&[version]);
    h.update(body);
    h.finalize()
}

impl StoredNotification {
    /// The encoded value, stored under [`StoredNotification::key`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 96 + self.payload.len() + self.token.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&[0; 4]);
        put_bytes(&mut out, self.domain.as_bytes());
        put_bytes(&mut out, &self.token);
        let flags = flag(self.topic.is_some(), HAS_TOPIC)
            | flag(self.push_type.is_some(), HAS_PUSH_TYPE)
            | flag(self.priority.is_some(), HAS_PRIORITY)
            | flag(self.expiration.is_some(), HAS_EXPIRATION)
            | flag(self.collapse_id.is_some(), HAS_COLLAPSE_ID)
            | flag(self.apns_id.is_some(), HAS_APNS_ID)
            | flag(self.binding.is_some(), HAS_BINDING);
        out.push(flags);
        if let Some(t) = &self.topic {
            put_bytes(&mut out, t.as_bytes());
        }
        if let Some(t) = &self.push_type {
            put_bytes(&mut out, t.as_bytes());
        }
        if let Some(p) = self.priority {
            out.push(p);
        }
        if let Some(e) = self.expiration {
            out.extend_from_slice(&e.to_le_bytes());
        }
        if let Some(c) = &self.collapse_id {
            put_bytes(&mut out, c.as_bytes());
        }
        if let Some(a) = &self.apns_id {
            put_bytes(&mut out, a.as_bytes());
        }
        if let Some(b) = &self.binding {
            put_bytes(&mut out, b.as_bytes());
        }
        put_bytes(&mut out, &self.payload);
        put_bytes(&mut out, self.sender.as_bytes());
        put_bytes(&mut out, self.recipient.as_bytes());
        out.extend_from_slice(&self.received_at.to_le_bytes());
        out.extend_from_slice(&self.batch_id.to_le_bytes());
        out.extend_from_slice(&self.conn_id.to_le_bytes());
        out.extend_from_slice(&self.retries.to_le_bytes());
        out.extend_from_slice(&self.next_attempt_ms.to_le_bytes());
        let crc = checksum(self.key, RECORD_VERSION, &out[HEADER_LEN..]);
        out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the value stored under `key`, checking checksum and version first: a value of another version is
    /// [`DecodeError::UnknownVersion`] only when its checksum is right (else it is damaged, a flipped version byte
    /// included).
    pub fn decode(key: SpoolKey, value: &[u8]) -> Result<StoredNotification, DecodeError> {
        let (&version, rest) = value.split_first().ok_or(DecodeError::Empty)?;
        if rest.len() < 4 {
            return Err(DecodeError::Truncated("checksum"));
        }
        let (crc, body) = rest.split_at(4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = checksum(key, version, body);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        if version != RECORD_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let mut r = Reader { buf: body };
        let domain = r.string("domain")?;
        let token = r.bytes("token")?.to_vec();
        let flags = r.u8("flags")?;
        if flags & !ALL_FLAGS != 0 {
            return Err(DecodeError::BadFlags(flags));
        }
        let topic = r.opt_string(flags & HAS_TOPIC != 0, "topic")?;
        let push_type = r.opt_string(flags & HAS_PUSH_TYPE != 0, "push_type")?;
        let priority = match flags & HAS_PRIORITY != 0 {
            true => Some(r.u8("priority")?),
            false => None,
        };
        let expiration = match flags & HAS_EXPIRATION != 0 {
            true => Some(u32::from_le_bytes(r.array("expiration")?)),
            false => None,
        };
        let collapse_id = r.opt_string(flags & HAS_COLLAPSE_ID != 0, "collapse_id")?;
        let apns_id = r.opt_string(flags & HAS_APNS_ID != 0, "apns_id")?;
        let binding = r.opt_string(flags & HAS_BINDING != 0, "binding")?;
        let payload = r.bytes("payload")?.to_vec();
        let sender = r.string("sender")?;
        let recipient = r.string("recipient")?;
        let received_at = u64::from_le_bytes(r.array("received_at")?);
        let batch_id = u128::from_le_bytes(r.array("batch_id")?);
        let conn_id = u128::from_le_bytes(r.array("conn_id")?);
        let retries = u32::from_le_bytes(r.array("retries")?);
        let next_attempt_ms = u64::from_le_bytes(r.array("next_attempt_ms")?);
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(StoredNotification {
            key,
            domain,
            token,
            topic,
            push_type,
            priority,
            expiration,
            collapse_id,
            apns_id,
            binding,
            payload,
            sender,
            recipient,
            received_at,
            batch_id,
            conn_id,
            retries,
            next_attempt_ms,
        })
    }
}

impl Schedule {
    /// The encoded value, stored under `key` in the schedule table.
    pub fn encode(self, key: SpoolKey) -> [u8; SCHEDULE_LEN] {
        let mut out = [0u8; SCHEDULE_LEN];
        out[0] = RECORD_VERSION;
        out[1..5].copy_from_slice(&self.retries.to_le_bytes());
        out[5..13].copy_from_slice(&self.next_attempt_ms.to_le_bytes());
        let crc = checksum(key, RECORD_VERSION, &out[1..13]);
        out[13..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(key: SpoolKey, value: &[u8]) -> Result<Schedule, DecodeError> {
        let (&version, _) = value.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        if value.len() != SCHEDULE_LEN {
            return Err(DecodeError::BadLength("schedule"));
        }
        let mut r = Reader { buf: &value[1..] };
        let retries = u32::from_le_bytes(r.array("retries")?);
        let next_attempt_ms = u64::from_le_bytes(r.array("next_attempt_ms")?);
        let stored = u32::from_le_bytes(r.array("checksum")?);
        let computed = checksum(key, version, &value[1..13]);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        Ok(Schedule {
            retries,
            next_attempt_ms,
        })
    }
}

fn flag(present: bool, bit: u8) -> u8 {
    if present { bit } else { 0 }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(field)?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // Only the shortest encoding is valid, so that a value has one encoding.
                if (b == 0 && shift > 0) || (shift == 63 && b > 1) {
                    return Err(DecodeError::BadLength(field));
                }
                return usize::try_from(n).map_err(|_| DecodeError::BadLength(field));
            }
        }
        Err(DecodeError::BadLength(field))
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field)?;
        self.take(n, field)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn opt_string(
        &mut self,
        present: bool,
        field: &'static str,
    ) -> Result<Option<String>, DecodeError> {
        if present {
            self.string(field).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A typical notification of about 300 bytes.
    pub(crate) fn sample(key: u128) -> StoredNotification {
        StoredNotification {
            key: SpoolKey(key),
            domain: "com.example.app".into(),
            token: vec![0xab; 32],
            topic: Some("com.example.app".into()),
            push_type: Some("alert".into()),
            priority: Some(10),
            expiration: Some(1_900_000_000),
            collapse_id: None,
            apns_id: Some("2d1f4a7e-5c3b-4e8a-9b6d-0f1e2d3c4b5a".into()),
            binding: None,
            payload:
                br#"{"aps":{"alert":{"title":"Hello","body":"Your order has shipped"},"badge":1}}"#
                    .to_vec(),
            sender: "sender@example.com".into(),
            recipient: "abababab@com.example.app".into(),
            received_at: 1_790_000_000,
            batch_id: 7,
            conn_id: 9,
            retries: 0,
            next_attempt_ms: 0,
        }
    }

    #[test]
    fn round_trip_of_a_sample() {
        let n = sample(42);
        let v = n.encode();
        assert_eq!(v[0], RECORD_VERSION);
        assert_eq!(StoredNotification::decode(SpoolKey(42), &v), Ok(n));
    }

    /// A record written before bindings were kept (no binding flag) is the same bytes a default-binding
    /// notification encodes to now; a named binding survives the round trip.
    #[test]
    fn the_binding_is_optional_and_compatible() {
        let default = sample(3);
        let v = default.encode();
        assert_eq!(
            v[HEADER_LEN + 1 + default.domain.len() + 1 + 32] & HAS_BINDING,
            0
        );
        let decoded = StoredNotification::decode(SpoolKey(3), &v).unwrap();
        assert_eq!(decoded.binding, None);
        let named = StoredNotification {
            binding: Some("outbound-b".into()),
            ..sample(3)
        };
        let w = named.encode();
        assert_eq!(w.len(), v.len() + 1 + "outbound-b".len());
        assert_eq!(StoredNotification::decode(SpoolKey(3), &w), Ok(named));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let v = sample(1).encode();
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut c = v.clone();
                c[i] ^= 1 << bit;
                assert!(
                    StoredNotification::decode(SpoolKey(1), &c).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let v = sample(1).encode();
        for len in 0..v.len() {
            assert!(
                StoredNotification::decode(SpoolKey(1), &v[..len]).is_err(),
                "length {len}"
            );
        }
        assert_eq!(
            StoredNotification::decode(SpoolKey(1), &[]),
            Err(DecodeError::Empty)
        );
    }

    #[test]
    fn a_value_under_the_wrong_key_is_detected() {
        let v = sample(1).encode();
        assert!(matches!(
            StoredNotification::decode(SpoolKey(2), &v),
            Err(DecodeError::Checksum { .. })
        ));
    }

    /// `value` with its checksum made right again after a change.
    fn reseal(key: u128, mut value: Vec<u8>) -> Vec<u8> {
        let crc = checksum(SpoolKey(key), value[0], &value[HEADER_LEN..]);
        value[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        value
    }

    #[test]
    fn unknown_version_is_a_typed_error() {
        let mut v = sample(1).encode();
        v[0] = 2;
        // A changed version byte alone is damage: the checksum covers it.
        assert!(matches!(
            StoredNotification::decode(SpoolKey(1), &v),
            Err(DecodeError::Checksum { .. })
        ));
        let v = reseal(1, v);
        assert_eq!(
            StoredNotification::decode(SpoolKey(1), &v),
            Err(DecodeError::UnknownVersion(2))
        );
        let mut s = Schedule {
            retries: 1,
            next_attempt_ms: 2,
        }
        .encode(SpoolKey(1));
        s[0] = 0;
        assert_eq!(
            Schedule::decode(SpoolKey(1), &s),
            Err(DecodeError::UnknownVersion(0))
        );
    }

    /// What a newer herald may write (a greater version, a new presence flag, a field after the last) is told
    /// apart from damage (a torn or flipped record, an older version that never existed).
    #[test]
    fn records_of_a_newer_herald_are_told_apart_from_damaged_ones() {
        let key = 7;
        let v = sample(key).encode();
        let newer = |value: Vec<u8>| {
            StoredNotification::decode(SpoolKey(key), &value)
                .unwrap_err()
                .is_newer_format()
        };
        let mut version = v.clone();
        version[0] = RECORD_VERSION + 1;
        assert!(newer(reseal(key, version.clone())));
        assert!(
            !newer(version),
            "a version byte changed without its checksum"
        );
        let mut zero = v.clone();
        zero[0] = 0;
        assert!(!newer(reseal(key, zero)), "version 0 was never written");

        let flags_at = HEADER_LEN + 1 + "com.example.app".len() + 1 + 32;
        let mut flags = v.clone();
        flags[flags_at] |= 0x80;
        assert_eq!(
            StoredNotification::decode(SpoolKey(key), &reseal(key, flags.clone())),
            Err(DecodeError::BadFlags(flags[flags_at]))
        );
        assert!(newer(reseal(key, flags.clone())));
        assert!(!newer(flags));

        let mut trailing = v.clone();
        trailing.extend_from_slice(&[1, 2, 3]);
        assert!(newer(reseal(key, trailing.clone())));
        assert!(!newer(trailing));

        assert!(!newer(v[..v.len() - 1].to_vec()));
        assert!(!newer(reseal(key, v[..v.len() - 1].to_vec())), "truncated");
        assert!(!newer(Vec::new()));
    }

    #[test]
    fn schedule_round_trip_and_corruption() {
        let s = Schedule {
            retries: 3,
            next_attempt_ms: 1_790_000_000_123,
        };
        let v = s.encode(SpoolKey(5));
        assert_eq!(Schedule::decode(SpoolKey(5), &v), Ok(s));
        assert!(Schedule::decode(SpoolKey(6), &v).is_err());
        let mut c = v;
        c[7] ^= 0x10;
        assert!(matches!(
            Schedule::decode(SpoolKey(5), &c),
            Err(DecodeError::Checksum { .. })
        ));
        assert_eq!(
            Schedule::decode(SpoolKey(5), &v[..10]),
            Err(DecodeError::BadLength("schedule"))
        );
    }

    fn opt_str() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,40}")
    }

    prop_compose! {
        fn any_notification()(
            key in any::<u128>(),
            domain in ".{0,60}",
            token in proptest::collection::vec(any::<u8>(), 0..200),
            topic in opt_str(), push_type in opt_str(),
            priority in proptest::option::of(any::<u8>()),
            expiration in proptest::option::of(any::<u32>()),
            collapse_id in opt_str(), apns_id in opt_str(), binding in opt_str(),
            payload in proptest::collection::vec(any::<u8>(), 0..5000),
            sender in ".{0,40}", recipient in ".{0,40}",
            received_at in any::<u64>(), batch_id in any::<u128>(), conn_id in any::<u128>(),
            retries in any::<u32>(), next_attempt_ms in any::<u64>(),
        ) -> StoredNotification {
            StoredNotification {
                key: SpoolKey(key), domain, token, topic, push_type, priority, expiration, collapse_id, apns_id,
                binding, payload, sender, recipient, received_at, batch_id, conn_id, retries, next_attempt_ms,
            }
        }
    }

    proptest! {
        #[test]
        fn any_notification_round_trips(n in any_notification()) {
            let v = n.encode();
            prop_assert_eq!(StoredNotification::decode(n.key, &v), Ok(n));
        }

        #[test]
        fn arbitrary_bytes_never_panic(key in any::<u128>(), bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = StoredNotification::decode(SpoolKey(key), &bytes);
            let _ = Schedule::decode(SpoolKey(key), &bytes);
        }

        #[test]
        fn garbage_with_a_valid_header_is_rejected(key in any::<u128>(), body in proptest::collection::vec(any::<u8>(), 0..400)) {
            // A body that is not an encoding must fail: either the checksum or the structure.
            let mut v = vec![RECORD_VERSION, 0, 0, 0, 0];
            v.extend_from_slice(&body);
            let crc = checksum(SpoolKey(key), RECORD_VERSION, &body);
            v[1..5].copy_from_slice(&crc.to_le_bytes());
            if let Ok(n) = StoredNotification::decode(SpoolKey(key), &v) {
                // Only possible if the body happens to be a valid encoding: then it re-encodes to itself.
                prop_assert_eq!(n.encode(), v);
            }
        }
    }
}
