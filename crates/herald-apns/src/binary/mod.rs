//! The legacy binary provider API: notification commands 0, 1 and 2, the 6-byte error-response packet and
//! feedback-service tuples (docs/apns-protocol.md#legacy-binary, docs/apns-protocol.md#feedback-service).
//!
//! Encoders append to a caller's `BytesMut`. Decoders are incremental: call `decode` with the bytes received
//! so far; it returns `Ok(None)` until a whole item is present, then removes exactly that item from the
//! buffer. Malformed input gives a [`DecodeError`] carrying the status APNs would answer with; no input
//! makes them panic. A decoder re-reads item headers from the start of the buffer on each call (at most a
//! handful per notification), so it keeps no state between calls besides its limits.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

mod decode;
mod error_packet;
mod feedback;

pub use decode::{
    DecodeError, DecodeErrorKind, DecodedNotification, DecoderLimits, NotificationDecoder,
};
pub use error_packet::{ERROR_PACKET_COMMAND, ERROR_PACKET_LEN, ErrorPacket};
pub use feedback::{FeedbackDecoder, FeedbackTuple};

/// Which notification command carries a binary notification (docs/apns-protocol.md#binary-command-0,
/// docs/apns-protocol.md#binary-command-1, docs/apns-protocol.md#binary-command-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryFormat {
    /// Command 0: no identifier, no expiry, priority 10 implied.
    Simple,
    /// Command 1: identifier and expiry.
    Enhanced,
    /// Command 2: a frame of items (token, payload, identifier, expiry, priority).
    Frame,
}

impl BinaryFormat {
    pub fn command(self) -> u8 {
        match self {
            BinaryFormat::Simple => 0,
            BinaryFormat::Enhanced => 1,
            BinaryFormat::Frame => 2,
        }
    }

    pub fn from_command(command: u8) -> Option<BinaryFormat> {
        match command {
            0 => Some(BinaryFormat::Simple),
            1 => Some(BinaryFormat::Enhanced),
            2 => Some(BinaryFormat::Frame),
            _ => None,
        }
    }

    /// Whether the format has a priority field: only the frame format (item 5). APNs takes a notification in the
    /// simple or enhanced format as priority 10 (docs/apns-protocol.md#binary-command-1), so a domain that sends
    /// one of them cannot send priority 5, and with it no background push.
    pub fn carries_priority(self) -> bool {
        self == BinaryFormat::Frame
    }

    /// The format's name in `apn_binary_format` and its command, as refusals name it (`enhanced (command 1)`).
    pub fn describe(self) -> &'static str {
        match self {
            BinaryFormat::Simple => "simple (command 0)",
            BinaryFormat::Enhanced => "enhanced (command 1)",
            BinaryFormat::Frame => "frame (command 2)",
        }
    }

    /// APNs answers errors in commands 1 and 2 with an error packet; for command 0 it only closes the
    /// connection (docs/apns-protocol.md#binary-command-0, docs/apns-protocol.md#binary-error-packet).
    pub fn sends_error_packet(self) -> bool {
        self != BinaryFormat::Simple
    }
}

/// Status byte of an error-response packet (docs/apns-protocol.md#binary-error-packet). There is no status 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    NoErrors,
    ProcessingError,
    MissingDeviceToken,
    MissingTopic,
    MissingPayload,
    InvalidTokenSize,
    InvalidTopicSize,
    InvalidPayloadSize,
    InvalidToken,
    Shutdown,
    ProtocolError,
    Unknown,
}

impl Status {
    /// Every status of docs/apns-protocol.md#binary-error-packet, in code order.
    pub const ALL: [Status; 12] = [
        Status::NoErrors,
        Status::ProcessingError,
        Status::MissingDeviceToken,
        Status::MissingTopic,
        Status::MissingPayload,
        Status::InvalidTokenSize,
        Status::InvalidTopicSize,
        Status::InvalidPayloadSize,
        Status::InvalidToken,
        Status::Shutdown,
        Status::ProtocolError,
        Status::Unknown,
    ];

    pub fn code(self) -> u8 {
        match self {
            Status::NoErrors => 0,
            Status::ProcessingError => 1,
            Status::MissingDeviceToken => 2,
            Status::MissingTopic => 3,
            Status::MissingPayload => 4,
            Status::InvalidTokenSize => 5,
            Status::InvalidTopicSize => 6,
            Status::InvalidPayloadSize => 7,
            Status::InvalidToken => 8,
            Status::Shutdown => 10,
            Status::ProtocolError => 128,
            Status::Unknown => 255,
        }
    }

    /// `None` for codes APNs never defined (9, 11..127, 129..254).
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The status's description in Apple's words (TN2265's table, docs/momentum-compat.md#apple-status-codes), as logs
    /// show it, e.g. `Invalid token`.
    pub fn apple_text(self) -> &'static str {
        match self {
            Status::NoErrors => "No errors encountered",
            Status::ProcessingError => "Processing error",
            Status::MissingDeviceToken => "Missing device token",
            Status::MissingTopic => "Missing topic",
            Status::MissingPayload => "Missing payload",
            Status::InvalidTokenSize => "Invalid token size",
            Status::InvalidTopicSize => "Invalid topic size",
            Status::InvalidPayloadSize => "Invalid payload size",
            Status::InvalidToken => "Invalid token",
            Status::Shutdown => "Shutdown",
            Status::ProtocolError => "Protocol error",
            Status::Unknown => "None (unknown)",
        }
    }

    /// What the status means, in a few words.
    pub fn meaning(self) -> &'static str {
        match self {
            Status::NoErrors => "no errors encountered",
            Status::ProcessingError => "processing error",
            Status::MissingDeviceToken => "missing device token",
            Status::MissingTopic => "missing topic",
            Status::MissingPayload => "missing payload",
            Status::InvalidTokenSize => "invalid token size",
            Status::InvalidTopicSize => "invalid topic size",
            Status::InvalidPayloadSize => "invalid payload size",
            Status::InvalidToken => "invalid token",
            Status::Shutdown => {
                "shutdown: the server closed the connection; the identifier is the last notification it accepted"
            }
            Status::ProtocolError => "protocol error: the notification could not be parsed",
            Status::Unknown => "none (unknown)",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

/// One notification on the binary protocol. Fields a format lacks are ignored when encoding and take their
/// implied values when decoding (identifier 0, expiry 0, priority 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryNotification {
    pub identifier: u32,
    /// Seconds since the epoch; 0 = try once, don't store.
    pub expiry: u32,
    /// 10 or 5 (docs/apns-protocol.md#binary-command-2 item 5).
    pub priority: u8,
    pub token: Vec<u8>,
    pub payload: Bytes,
}

impl BinaryNotification {
    /// Encoded size in bytes for a format (37+N, 45+N, or 61+N for a 32-byte token,
    /// docs/apns-protocol.md#binary-command-0, docs/apns-protocol.md#binary-command-1,
    /// docs/apns-protocol.md#binary-command-2).
    pub fn encoded_len(&self, format: BinaryFormat) -> usize {
        let (t, p) = (self.token.len(), self.payload.len());
        match format {
            BinaryFormat::Simple => 1 + 2 + t + 2 + p,
            BinaryFormat::Enhanced => 1 + 4 + 4 + 2 + t + 2 + p,
            BinaryFormat::Frame => 5 + frame_data_len(t, p),
        }
    }
}

fn frame_data_len(token: usize, payload: usize) -> usize {
    (3 + token) + (3 + payload) + (3 + 4) + (3 + 4) + (3 + 1)
}

/// Why a notification could not be encoded (it does not fit the wire format's length fields).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("device token of {len} bytes does not fit a 16-bit length field")]
    TokenTooLong { len: usize },
    #[error("payload of {len} bytes does not fit a 16-bit length field")]
    PayloadTooLong { len: usize },
}

pub(crate) const ITEM_TOKEN: u8 = 1;
pub(crate) const ITEM_PAYLOAD: u8 = 2;
pub(crate) const ITEM_IDENTIFIER: u8 = 3;
pub(crate) const ITEM_EXPIRY: u8 = 4;
pub(crate) const ITEM_PRIORITY: u8 = 5;

/// Appends `n` in `format` to `out`. Nothing is written on error. The encoder does not apply APNs limits
/// (32-byte token, 2048-byte payload): validate first (see [`crate::payload`]); it refuses only what the
/// length fields cannot represent.
pub fn encode(
    n: &BinaryNotification,
    format: BinaryFormat,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let token_len = u16::try_from(n.token.len())
        .map_err(|_| EncodeError::TokenTooLong { len: n.token.len() })?;
    let payload_len = u16::try_from(n.payload.len()).map_err(|_| EncodeError::PayloadTooLong {
        len: n.payload.len(),
    })?;
    out.reserve(n.encoded_len(format));
    match format {
        BinaryFormat::Simple | BinaryFormat::Enhanced => {
            out.put_u8(format.command());
            if format == BinaryFormat::Enhanced {
                out.put_u32(n.identifier);
                out.put_u32(n.expiry);
            }
            out.put_u16(token_len);
            out.put_slice(&n.token);
            out.put_u16(payload_len);
            out.put_slice(&n.payload);
        }
        BinaryFormat::Frame => {
            // Both lengths fit u16, so the frame length fits u32.
            let frame_len = frame_data_len(n.token.len(), n.payload.len()) as u32;
            out.put_u8(format.command());
            out.put_u32(frame_len);
            out.put_u8(ITEM_TOKEN);
            out.put_u16(token_len);
            out.put_slice(&n.token);
            out.put_u8(ITEM_PAYLOAD);
            out.put_u16(payload_len);
            out.put_slice(&n.payload);
            out.put_u8(ITEM_IDENTIFIER);
            out.put_u16(4);
            out.put_u32(n.identifier);
            out.put_u8(ITEM_EXPIRY);
            out.put_u16(4);
            out.put_u32(n.expiry);
            out.put_u8(ITEM_PRIORITY);
            out.put_u16(1);
            out.put_u8(n.priority);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(super) fn token() -> Vec<u8> {
        (0u8..32).collect()
    }

    pub(super) fn note(payload: &[u8]) -> BinaryNotification {
        BinaryNotification {
            identifier: 0x0102_0304,
            expiry: 0x0a0b_0c0d,
            priority: 10,
            token: token(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    pub(super) fn encoded(n: &BinaryNotification, f: BinaryFormat) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(n, f, &mut out).unwrap();
        out.to_vec()
    }

    pub(super) const P: &[u8] = br#"{"aps":{"alert":"hi"}}"#;

    #[test]
    fn simple_format_layout() {
        // docs/apns-protocol.md#binary-command-0: |0|len=32|token|len|payload|, total 37+N.
        let n = note(P);
        let b = encoded(&n, BinaryFormat::Simple);
        assert_eq!(b.len(), 37 + P.len());
        assert_eq!(b.len(), n.encoded_len(BinaryFormat::Simple));
        assert_eq!(&b[..3], &[0, 0, 32]);
        assert_eq!(&b[3..35], &token()[..]);
        assert_eq!(&b[35..37], &(P.len() as u16).to_be_bytes());
        assert_eq!(&b[37..], P);
    }

    #[test]
    fn enhanced_format_layout() {
        // docs/apns-protocol.md#binary-command-1: |1|id|expiry|len=32|token|len|payload|, total 45+N.
        let n = note(P);
        let b = encoded(&n, BinaryFormat::Enhanced);
        assert_eq!(b.len(), 45 + P.len());
        assert_eq!(&b[..11], &[1, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 32]);
        assert_eq!(&b[11..43], &token()[..]);
        assert_eq!(&b[43..45], &(P.len() as u16).to_be_bytes());
        assert_eq!(&b[45..], P);
    }

    #[test]
    fn frame_format_layout() {
        // docs/apns-protocol.md#binary-command-2: frame length 56+N, packet 61+N for a 32-byte token.
        let mut n = note(P);
        n.priority = 5;
        let b = encoded(&n, BinaryFormat::Frame);
        let len = P.len();
        assert_eq!(b.len(), 61 + len);
        assert_eq!(b[0], 2);
        assert_eq!(&b[1..5], &((56 + len) as u32).to_be_bytes());
        assert_eq!(&b[5..8], &[1, 0, 32]);
        assert_eq!(&b[8..40], &token()[..]);
        assert_eq!(b[40], 2);
        assert_eq!(&b[41..43], &(len as u16).to_be_bytes());
        assert_eq!(&b[43..43 + len], P);
        let rest = &b[43 + len..];
        assert_eq!(
            rest,
            &[
                3, 0, 4, 1, 2, 3, 4, 4, 0, 4, 0x0a, 0x0b, 0x0c, 0x0d, 5, 0, 1, 5
            ]
        );
    }

    #[test]
    fn encoder_refuses_unrepresentable_lengths_and_writes_nothing() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let mut n = note(P);
        n.payload = Bytes::from(vec![b'x'; 70_000]);
        for f in [
            BinaryFormat::Simple,
            BinaryFormat::Enhanced,
            BinaryFormat::Frame,
        ] {
            assert_eq!(
                encode(&n, f, &mut out),
                Err(EncodeError::PayloadTooLong { len: 70_000 })
            );
        }
        let mut n = note(P);
        n.token = vec![0; 65_536];
        assert_eq!(
            encode(&n, BinaryFormat::Frame, &mut out),
            Err(EncodeError::TokenTooLong { len: 65_536 })
        );
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn every_status_code_and_meaning() {
        // docs/apns-protocol.md#binary-error-packet table.
        let table: [(u8, &str); 12] = [
            (0, "no errors"),
            (1, "processing error"),
            (2, "missing device token"),
            (3, "missing topic"),
            (4, "missing payload"),
            (5, "invalid token size"),
            (6, "invalid topic size"),
            (7, "invalid payload size"),
            (8, "invalid token"),
            (10, "shutdown"),
            (128, "protocol error"),
            (255, "unknown"),
        ];
        for ((code, words), s) in table.into_iter().zip(Status::ALL) {
            assert_eq!(s.code(), code);
            assert_eq!(Status::from_code(code), Some(s));
            assert!(s.meaning().contains(words), "{code}: {}", s.meaning());
        }
        for code in (0..=255u8).filter(|c| !table.iter().any(|(t, _)| t == c)) {
            assert_eq!(Status::from_code(code), None, "{code}");
        }
        assert_eq!(Status::from_code(9), None);
    }
}
