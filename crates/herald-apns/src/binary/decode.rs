//! Incremental server-side decoding of notification commands 0, 1 and 2 (docs/apns-protocol.md#binary-command-0,
//! docs/apns-protocol.md#binary-command-1, docs/apns-protocol.md#binary-command-2), with errors that carry the status
//! APNs would answer (docs/apns-protocol.md#binary-error-packet).

use std::fmt;

use bytes::BytesMut;

use super::{
    BinaryFormat, BinaryNotification, ErrorPacket, ITEM_EXPIRY, ITEM_IDENTIFIER, ITEM_PAYLOAD,
    ITEM_PRIORITY, ITEM_TOKEN, Status,
};
use crate::push::BINARY_PAYLOAD_LIMIT;
use crate::token_hex::BINARY_TOKEN_LEN;

/// What exactly was malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    UnknownCommand(u8),
    MissingToken,
    BadTokenLength {
        len: usize,
        min: usize,
        max: usize,
    },
    MissingPayload,
    PayloadTooLarge {
        len: usize,
        max: usize,
    },
    DuplicateItem {
        item: u8,
    },
    UnknownItem {
        item: u8,
    },
    BadItemLength {
        item: u8,
        len: usize,
    },
    /// An item header or its data runs past the frame length.
    ItemOverrunsFrame {
        item: u8,
    },
    /// Priority other than 10 or 5.
    BadPriority(u8),
    /// The stream ended inside a notification of which `len` bytes had arrived.
    Truncated {
        len: usize,
    },
    /// An error-response packet that is not exactly 6 bytes.
    ErrorPacketLength(usize),
    /// An error-response packet whose first byte is not 8.
    NotAnErrorPacket {
        command: u8,
    },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::UnknownCommand(c) => write!(f, "unknown command byte {c}"),
            DecodeErrorKind::MissingToken => f.write_str("missing device token"),
            DecodeErrorKind::BadTokenLength { len, min, max } if min == max => {
                write!(f, "device token is {len} bytes, expected {min}")
            }
            DecodeErrorKind::BadTokenLength { len, min, max } => {
                write!(f, "device token is {len} bytes, expected {min} to {max}")
            }
            DecodeErrorKind::MissingPayload => f.write_str("missing payload"),
            DecodeErrorKind::PayloadTooLarge { len, max } => {
                write!(f, "payload is {len} bytes, limit {max}")
            }
            DecodeErrorKind::DuplicateItem { item } => write!(f, "frame item {item} appears twice"),
            DecodeErrorKind::UnknownItem { item } => write!(f, "unknown frame item id {item}"),
            DecodeErrorKind::BadItemLength { item, len } => {
                write!(f, "frame item {item} has length {len}")
            }
            DecodeErrorKind::ItemOverrunsFrame { item } => {
                write!(f, "frame item {item} runs past the frame end")
            }
            DecodeErrorKind::BadPriority(p) => write!(f, "priority {p} is neither 10 nor 5"),
            DecodeErrorKind::Truncated { len } => {
                write!(
                    f,
                    "the stream ended inside a notification ({len} bytes received)"
                )
            }
            DecodeErrorKind::ErrorPacketLength(n) => {
                write!(f, "error packet is {n} bytes, expected 6")
            }
            DecodeErrorKind::NotAnErrorPacket { command } => {
                write!(f, "error packet starts with command {command}, expected 8")
            }
        }
    }
}

/// A malformed binary notification, error packet or feedback tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    format: Option<BinaryFormat>,
    identifier: Option<u32>,
}

impl DecodeError {
    pub(crate) fn new(
        kind: DecodeErrorKind,
        format: Option<BinaryFormat>,
        identifier: Option<u32>,
    ) -> DecodeError {
        DecodeError {
            kind,
            format,
            identifier,
        }
    }

    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// The command of the notification, when the command byte was a known one.
    pub fn format(&self) -> Option<BinaryFormat> {
        self.format
    }

    /// The notification's identifier, when its format has one and it had been read.
    pub fn identifier(&self) -> Option<u32> {
        self.identifier
    }

    /// The status APNs would put in its error packet for this fault (docs/apns-protocol.md#binary-error-packet).
    pub fn status(&self) -> Status {
        match self.kind {
            DecodeErrorKind::MissingToken => Status::MissingDeviceToken,
            DecodeErrorKind::BadTokenLength { .. } => Status::InvalidTokenSize,
            DecodeErrorKind::MissingPayload => Status::MissingPayload,
            DecodeErrorKind::PayloadTooLarge { .. } => Status::InvalidPayloadSize,
            _ => Status::ProtocolError,
        }
    }

    /// The error packet a server should answer with. `None` for command 0, whose errors APNs answers only by
    /// closing (docs/apns-protocol.md#binary-command-0), and for an unknown command byte, after which APNs sends
    /// nothing back and closes (docs/apns-protocol.md#binary-error-packet). The identifier is 0 when it was not
    /// known.
    pub fn error_packet(&self) -> Option<ErrorPacket> {
        match self.format {
            None | Some(BinaryFormat::Simple) => None,
            Some(_) => Some(ErrorPacket {
                status: self.status(),
                identifier: self.identifier.unwrap_or(0),
            }),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed binary APNs data: {}", self.kind)?;
        if let Some(format) = self.format {
            write!(f, " (command {}", format.command())?;
            if let Some(id) = self.identifier {
                write!(f, ", identifier {id}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// Limits a [`NotificationDecoder`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    pub min_token_len: usize,
    pub max_token_len: usize,
    pub max_payload_len: usize,
}

impl Default for DecoderLimits {
    /// Exactly 32-byte tokens and payloads up to 2048 bytes (docs/apns-protocol.md#size-limits).
    fn default() -> Self {
        DecoderLimits {
            min_token_len: BINARY_TOKEN_LEN,
            max_token_len: BINARY_TOKEN_LEN,
            max_payload_len: BINARY_PAYLOAD_LIMIT,
        }
    }
}

/// A notification read by the server side, with the command it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedNotification {
    pub format: BinaryFormat,
    pub notification: BinaryNotification,
}

/// Incremental server-side decoder of commands 0, 1 and 2.
#[derive(Debug, Clone, Default)]
pub struct NotificationDecoder {
    limits: DecoderLimits,
}

pub(super) fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl NotificationDecoder {
    pub fn new(limits: DecoderLimits) -> NotificationDecoder {
        NotificationDecoder { limits }
    }

    pub fn limits(&self) -> DecoderLimits {
        self.limits
    }

    /// Takes one whole notification off the front of `buf`, or returns `Ok(None)` (leaving `buf` untouched)
    /// when more bytes are needed. After an error the stream cannot be resynchronised: answer and close.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<DecodedNotification>, DecodeError> {
        self.decode_with(buf, false)
    }

    /// Call when the stream has ended, with what is left in `buf` (`buf` is not changed): the fault of a
    /// malformed notification whose error was still waiting for the rest of its frame, a
    /// [`DecodeErrorKind::Truncated`] notification, or `None` when nothing (or only whole notifications,
    /// which `decode` would have returned) is left.
    pub fn finish(&mut self, buf: &BytesMut) -> Option<DecodeError> {
        let (&command, _) = buf.split_first()?;
        let mut rest = buf.clone();
        match self.decode_with(&mut rest, true) {
            Err(e) => Some(e),
            Ok(Some(_)) => None,
            Ok(None) => {
                let format = BinaryFormat::from_command(command);
                let identifier = match format {
                    Some(BinaryFormat::Enhanced) => be32(buf, 1),
                    Some(BinaryFormat::Frame) => buf.get(5..).and_then(find_identifier),
                    _ => None,
                };
                Some(DecodeError::new(
                    DecodeErrorKind::Truncated { len: buf.len() },
                    format,
                    identifier,
                ))
            }
        }
    }

    fn decode_with(
        &mut self,
        buf: &mut BytesMut,
        eager: bool,
    ) -> Result<Option<DecodedNotification>, DecodeError> {
        let Some(&command) = buf.first() else {
            return Ok(None);
        };
        match BinaryFormat::from_command(command) {
            Some(BinaryFormat::Simple) => self.decode_legacy(buf, BinaryFormat::Simple),
            Some(BinaryFormat::Enhanced) => self.decode_legacy(buf, BinaryFormat::Enhanced),
            Some(BinaryFormat::Frame) => self.decode_frame(buf, eager),
            None => Err(DecodeError::new(
                DecodeErrorKind::UnknownCommand(command),
                None,
                None,
            )),
        }
    }

    fn check_token_len(&self, len: usize) -> Result<(), DecodeErrorKind> {
        if len == 0 {
            Err(DecodeErrorKind::MissingToken)
        } else if len < self.limits.min_token_len || len > self.limits.max_token_len {
            Err(DecodeErrorKind::BadTokenLength {
                len,
                min: self.limits.min_token_len,
                max: self.limits.max_token_len,
            })
        } else {
            Ok(())
        }
    }

    fn check_payload_len(&self, len: usize) -> Result<(), DecodeErrorKind> {
        if len == 0 {
            Err(DecodeErrorKind::MissingPayload)
        } else if len > self.limits.max_payload_len {
            Err(DecodeErrorKind::PayloadTooLarge {
                len,
                max: self.limits.max_payload_len,
            })
        } else {
            Ok(())
        }
    }

    /// Commands 0 and 1 (docs/apns-protocol.md#binary-command-0, docs/apns-protocol.md#binary-command-1).
    fn decode_legacy(
        &self,
        buf: &mut BytesMut,
        format: BinaryFormat,
    ) -> Result<Option<DecodedNotification>, DecodeError> {
        let b = &buf[..];
        let (identifier, expiry, tl_at) = if format == BinaryFormat::Enhanced {
            let (Some(id), Some(exp)) = (be32(b, 1), be32(b, 5)) else {
                return Ok(None);
            };
            (Some(id), exp, 9)
        } else {
            (None, 0, 1)
        };
        let err = |kind| DecodeError::new(kind, Some(format), identifier);
        let Some(token_len) = be16(b, tl_at) else {
            return Ok(None);
        };
        self.check_token_len(token_len).map_err(err)?;
        let token_at = tl_at + 2;
        let pl_at = token_at + token_len;
        let Some(payload_len) = be16(b, pl_at) else {
            return Ok(None);
        };
        self.check_payload_len(payload_len).map_err(err)?;
        let payload_at = pl_at + 2;
        let total = payload_at + payload_len;
        if b.len() < total {
            return Ok(None);
        }
        let bytes = buf.split_to(total).freeze();
        Ok(Some(DecodedNotification {
            format,
            notification: BinaryNotification {
                identifier: identifier.unwrap_or(0),
                expiry,
                priority: 10,
                token: bytes[token_at..pl_at].to_vec(),
                payload: bytes.slice(payload_at..total),
            },
        }))
    }

    /// Command 2 (docs/apns-protocol.md#binary-command-2). Item headers are checked as soon as they arrive, so the
    /// fault is known early; unless `eager`, it is reported once the whole frame is in (if the frame length is
    /// plausible), so that the identifier item can be found even when it follows the faulty item, as APNs would.
    fn decode_frame(
        &self,
        buf: &mut BytesMut,
        eager: bool,
    ) -> Result<Option<DecodedNotification>, DecodeError> {
        let scan = match self.scan_frame(&buf[..]) {
            Ok(Some(scan)) => scan,
            Ok(None) => return Ok(None),
            Err(mut e) => {
                let b = &buf[..];
                let frame_end = be32(b, 1).map_or(0, |len| 5usize.saturating_add(len as usize));
                if !eager && frame_end <= MAX_AWAITED_FRAME {
                    if b.len() < frame_end {
                        return Ok(None);
                    }
                    if e.identifier.is_none() {
                        e.identifier = find_identifier(&b[5..frame_end]);
                    }
                }
                return Err(e);
            }
        };
        let bytes = buf.split_to(scan.frame_end).freeze();
        Ok(Some(DecodedNotification {
            format: BinaryFormat::Frame,
            notification: BinaryNotification {
                identifier: scan.identifier.unwrap_or(0),
                expiry: scan.expiry,
                priority: scan.priority,
                token: bytes[scan.token.0..scan.token.1].to_vec(),
                payload: bytes.slice(scan.payload.0..scan.payload.1),
            },
        }))
    }

    /// Walks the items of the frame at the start of `b`. Each item may appear once, so a valid frame is
    /// bounded and so is what this waits for.
    fn scan_frame(&self, b: &[u8]) -> Result<Option<FrameScan>, DecodeError> {
        let format = Some(BinaryFormat::Frame);
        let Some(frame_len) = be32(b, 1) else {
            return Ok(None);
        };
        let frame_end = 5usize.saturating_add(frame_len as usize);
        let mut at = 5usize;
        let mut seen = 0u8;
        let mut identifier: Option<u32> = None;
        let mut expiry = 0u32;
        let mut priority = 10u8;
        let mut token: Option<(usize, usize)> = None;
        let mut payload: Option<(usize, usize)> = None;
        while at < frame_end {
            let Some(&item) = b.get(at) else {
                return Ok(None);
            };
            let err = |kind| DecodeError::new(kind, format, identifier);
            if frame_end - at < 3 {
                return Err(err(DecodeErrorKind::ItemOverrunsFrame { item }));
            }
            let Some(len) = be16(b, at + 1) else {
                return Ok(None);
            };
            let data_at = at + 3;
            let data_end = data_at + len;
            if data_end > frame_end {
                return Err(err(DecodeErrorKind::ItemOverrunsFrame { item }));
            }
            if !(ITEM_TOKEN..=ITEM_PRIORITY).contains(&item) {
                return Err(err(DecodeErrorKind::UnknownItem { item }));
            }
            let bit = 1u8 << item;
            if seen & bit != 0 {
                return Err(err(DecodeErrorKind::DuplicateItem { item }));
            }
            seen |= bit;
            match item {
                ITEM_TOKEN => {
                    self.check_token_len(len).map_err(err)?;
                    token = Some((data_at, data_end));
                }
                ITEM_PAYLOAD => {
                    self.check_payload_len(len).map_err(err)?;
                    payload = Some((data_at, data_end));
                }
                _ => {
                    let want = if item == ITEM_PRIORITY { 1 } else { 4 };
                    if len != want {
                        return Err(err(DecodeErrorKind::BadItemLength { item, len }));
                    }
                    if b.len() < data_end {
                        return Ok(None);
                    }
                    match item {
                        ITEM_IDENTIFIER => identifier = be32(b, data_at),
                        ITEM_EXPIRY => expiry = be32(b, data_at).unwrap_or(0),
                        _ => {
                            priority = b[data_at];
                            if priority != 10 && priority != 5 {
                                return Err(err(DecodeErrorKind::BadPriority(priority)));
                            }
                        }
                    }
                }
            }
            at = data_end;
        }
        let err = |kind| DecodeError::new(kind, format, identifier);
        if b.len() < frame_end {
            return Ok(None);
        }
        let token = token.ok_or_else(|| err(DecodeErrorKind::MissingToken))?;
        let payload = payload.ok_or_else(|| err(DecodeErrorKind::MissingPayload))?;
        Ok(Some(FrameScan {
            frame_end,
            identifier,
            expiry,
            priority,
            token,
            payload,
        }))
    }
}

/// Where the parts of a complete, valid frame lie.
struct FrameScan {
    frame_end: usize,
    identifier: Option<u32>,
    expiry: u32,
    priority: u8,
    token: (usize, usize),
    payload: (usize, usize),
}

/// The largest frame whose items could all be well-formed (two 16-bit-length items plus the three fixed
/// ones): a faulty frame up to this size is read whole before its error is reported.
const MAX_AWAITED_FRAME: usize = 5 + 2 * (3 + u16::MAX as usize) + 2 * (3 + 4) + (3 + 1);

/// Best-effort search for the identifier item among frame items, however malformed the others are.
fn find_identifier(items: &[u8]) -> Option<u32> {
    let mut at = 0;
    while let (Some(&item), Some(len)) = (items.get(at), be16(items, at + 1)) {
        if item == ITEM_IDENTIFIER && len == 4 {
            return be32(items, at + 3);
        }
        at += 3 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};

    use super::super::encode;
    use super::super::tests::{P, encoded, note, token};
    use super::*;

    type LegacyCase<'a> = (u16, Vec<u8>, u16, &'a [u8], DecodeErrorKind);
    type FrameCase = (Vec<(u8, Vec<u8>)>, DecodeErrorKind, Option<u32>, u8);

    /// Feeds `bytes` split at every point and checks the decoder waits, then yields `want`.
    fn check_every_split(bytes: &[u8], want: &DecodedNotification) {
        for split in 0..=bytes.len() {
            let mut dec = NotificationDecoder::default();
            let mut buf = BytesMut::from(&bytes[..split]);
            if split < bytes.len() {
                assert_eq!(dec.decode(&mut buf).unwrap(), None, "split {split}");
                assert_eq!(
                    buf.len(),
                    split,
                    "a partial notification must stay in the buffer"
                );
                buf.extend_from_slice(&bytes[split..]);
            }
            assert_eq!(
                dec.decode(&mut buf).unwrap().as_ref(),
                Some(want),
                "split {split}"
            );
            assert!(buf.is_empty());
            assert_eq!(dec.decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn every_format_round_trips_at_every_split_point() {
        let n = note(P);
        for f in [
            BinaryFormat::Simple,
            BinaryFormat::Enhanced,
            BinaryFormat::Frame,
        ] {
            let mut want = n.clone();
            if f == BinaryFormat::Simple {
                want.identifier = 0;
                want.expiry = 0;
            }
            check_every_split(
                &encoded(&n, f),
                &DecodedNotification {
                    format: f,
                    notification: want,
                },
            );
        }
    }

    #[test]
    fn byte_by_byte_stream_of_several_notifications() {
        let mut stream = Vec::new();
        let mut wants = Vec::new();
        for (i, f) in [
            BinaryFormat::Frame,
            BinaryFormat::Enhanced,
            BinaryFormat::Simple,
            BinaryFormat::Frame,
        ]
        .into_iter()
        .enumerate()
        {
            let mut n = note(P);
            n.identifier = i as u32;
            stream.extend(encoded(&n, f));
            if f == BinaryFormat::Simple {
                n.identifier = 0;
                n.expiry = 0;
            }
            wants.push(n);
        }
        let mut dec = NotificationDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in &stream {
            buf.put_u8(byte);
            while let Some(d) = dec.decode(&mut buf).unwrap() {
                got.push(d.notification);
            }
        }
        assert_eq!(got, wants);
    }

    #[test]
    fn frame_defaults_when_optional_items_are_missing() {
        // docs/apns-protocol.md#binary-command-2: identifier, expiry and priority items are optional.
        let mut b = vec![2u8];
        let items_len = 3 + 32 + 3 + P.len();
        b.extend((items_len as u32).to_be_bytes());
        b.extend([2u8]);
        b.extend((P.len() as u16).to_be_bytes());
        b.extend(P);
        b.extend([1u8, 0, 32]);
        b.extend(token());
        let want = DecodedNotification {
            format: BinaryFormat::Frame,
            notification: BinaryNotification {
                identifier: 0,
                expiry: 0,
                priority: 10,
                token: token(),
                payload: Bytes::from_static(P),
            },
        };
        check_every_split(&b, &want);
    }

    /// Feeds `bytes` at every split point; the result must be "need more" or exactly `want`, and the whole
    /// input must give `want`.
    fn check_error_at_every_split(bytes: &[u8], want: &DecodeError) {
        for split in 0..=bytes.len() {
            let mut dec = NotificationDecoder::default();
            let mut buf = BytesMut::from(&bytes[..split]);
            match dec.decode(&mut buf) {
                Ok(None) => {}
                Ok(Some(n)) => panic!("split {split}: decoded {n:?}"),
                Err(e) => assert_eq!(&e, want, "split {split}"),
            }
        }
        let mut buf = BytesMut::from(bytes);
        assert_eq!(
            NotificationDecoder::default().decode(&mut buf).unwrap_err(),
            *want
        );
    }

    fn legacy(
        f: BinaryFormat,
        token_len: u16,
        token: &[u8],
        payload_len: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = vec![f.command()];
        if f == BinaryFormat::Enhanced {
            b.extend(7u32.to_be_bytes());
            b.extend(0u32.to_be_bytes());
        }
        b.extend(token_len.to_be_bytes());
        b.extend(token);
        b.extend(payload_len.to_be_bytes());
        b.extend(payload);
        b
    }

    #[test]
    fn legacy_errors_carry_status_and_identifier() {
        // docs/apns-protocol.md#binary-error-packet statuses 2, 4, 5, 7.
        let big = vec![b'x'; 2049];
        let cases: [LegacyCase; 4] = [
            (0, vec![], 2, b"{}", DecodeErrorKind::MissingToken),
            (
                31,
                vec![0; 31],
                2,
                b"{}",
                DecodeErrorKind::BadTokenLength {
                    len: 31,
                    min: 32,
                    max: 32,
                },
            ),
            (32, token(), 0, b"", DecodeErrorKind::MissingPayload),
            (
                32,
                token(),
                2049,
                &big,
                DecodeErrorKind::PayloadTooLarge {
                    len: 2049,
                    max: 2048,
                },
            ),
        ];
        let statuses = [2u8, 5, 4, 7];
        for ((tl, t, pl, p, kind), status) in cases.into_iter().zip(statuses) {
            for f in [BinaryFormat::Simple, BinaryFormat::Enhanced] {
                let id = (f == BinaryFormat::Enhanced).then_some(7);
                let want = DecodeError::new(kind.clone(), Some(f), id);
                assert_eq!(want.status().code(), status);
                check_error_at_every_split(&legacy(f, tl, &t, pl, p), &want);
                let packet = want.error_packet();
                if f == BinaryFormat::Simple {
                    // docs/apns-protocol.md#binary-command-0: command 0 errors only close the connection.
                    assert_eq!(packet, None);
                } else {
                    assert_eq!(
                        packet,
                        Some(ErrorPacket {
                            status: want.status(),
                            identifier: 7
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn oversized_lengths_fail_before_their_bytes_arrive() {
        // A 65535-byte payload announcement is refused as soon as its length field is read.
        let mut buf = BytesMut::from(&legacy(BinaryFormat::Enhanced, 32, &token(), 65535, b"")[..]);
        let e = NotificationDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(e.status(), Status::InvalidPayloadSize);
        let mut frame = vec![2u8];
        frame.extend(u32::MAX.to_be_bytes());
        frame.extend([2u8, 0xff, 0xff]);
        let mut buf = BytesMut::from(&frame[..]);
        let e = NotificationDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(
            e.kind(),
            &DecodeErrorKind::PayloadTooLarge {
                len: 65535,
                max: 2048
            }
        );
    }

    fn frame_of(items: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (id, d) in items {
            data.push(*id);
            data.extend((d.len() as u16).to_be_bytes());
            data.extend(d);
        }
        let mut b = vec![2u8];
        b.extend((data.len() as u32).to_be_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn frame_errors() {
        let id = (3u8, 9u32.to_be_bytes().to_vec());
        let tok = (1u8, token());
        let pay = (2u8, P.to_vec());
        let fr = Some(BinaryFormat::Frame);
        let cases: Vec<FrameCase> = vec![
            (
                vec![id.clone(), pay.clone()],
                DecodeErrorKind::MissingToken,
                Some(9),
                2,
            ),
            (
                vec![id.clone(), tok.clone()],
                DecodeErrorKind::MissingPayload,
                Some(9),
                4,
            ),
            (
                vec![id.clone(), (1, vec![])],
                DecodeErrorKind::MissingToken,
                Some(9),
                2,
            ),
            (
                vec![id.clone(), (1, vec![1; 33])],
                DecodeErrorKind::BadTokenLength {
                    len: 33,
                    min: 32,
                    max: 32,
                },
                Some(9),
                5,
            ),
            (
                vec![id.clone(), tok.clone(), (2, vec![])],
                DecodeErrorKind::MissingPayload,
                Some(9),
                4,
            ),
            (
                vec![id.clone(), tok.clone(), (2, vec![b' '; 2049])],
                DecodeErrorKind::PayloadTooLarge {
                    len: 2049,
                    max: 2048,
                },
                Some(9),
                7,
            ),
            (
                vec![tok.clone(), tok.clone(), pay.clone()],
                DecodeErrorKind::DuplicateItem { item: 1 },
                None,
                128,
            ),
            (
                vec![tok.clone(), (6, vec![0]), pay.clone()],
                DecodeErrorKind::UnknownItem { item: 6 },
                None,
                128,
            ),
            (
                vec![tok.clone(), (0, vec![0]), pay.clone()],
                DecodeErrorKind::UnknownItem { item: 0 },
                None,
                128,
            ),
            (
                vec![tok.clone(), (3, vec![0; 3]), pay.clone()],
                DecodeErrorKind::BadItemLength { item: 3, len: 3 },
                None,
                128,
            ),
            (
                vec![tok.clone(), (4, vec![0; 5]), pay.clone()],
                DecodeErrorKind::BadItemLength { item: 4, len: 5 },
                None,
                128,
            ),
            (
                vec![tok.clone(), (5, vec![10, 10]), pay.clone()],
                DecodeErrorKind::BadItemLength { item: 5, len: 2 },
                None,
                128,
            ),
            (
                vec![id.clone(), tok.clone(), (5, vec![7]), pay.clone()],
                DecodeErrorKind::BadPriority(7),
                Some(9),
                128,
            ),
        ];
        for (items, kind, ident, status) in cases {
            let want = DecodeError::new(kind, fr, ident);
            assert_eq!(want.status().code(), status, "{want}");
            check_error_at_every_split(&frame_of(&items), &want);
        }
    }

    #[test]
    fn frame_items_must_fit_the_frame() {
        // Frame length says 10 but the token item announces 32 bytes.
        let mut b = vec![2u8, 0, 0, 0, 10, 1, 0, 32];
        b.extend(token());
        let want = DecodeError::new(
            DecodeErrorKind::ItemOverrunsFrame { item: 1 },
            Some(BinaryFormat::Frame),
            None,
        );
        check_error_at_every_split(&b, &want);
        // Two stray bytes at the end of a frame cannot hold an item header.
        let mut b = frame_of(&[(1, token()), (2, P.to_vec())]);
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) + 2;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        b.extend([5, 0]);
        let want = DecodeError::new(
            DecodeErrorKind::ItemOverrunsFrame { item: 5 },
            Some(BinaryFormat::Frame),
            None,
        );
        check_error_at_every_split(&b, &want);
    }

    #[test]
    fn unknown_command_is_a_protocol_error_answered_by_closing() {
        // docs/apns-protocol.md#binary-error-packet: counted as status 128, but an unknown command byte gets zero
        // bytes back, only the close.
        for c in [3u8, 8, 0x7f, 0xff] {
            let mut buf = BytesMut::from(&[c, 0, 0][..]);
            let e = NotificationDecoder::default().decode(&mut buf).unwrap_err();
            assert_eq!(e.status(), Status::ProtocolError);
            assert_eq!(e.kind(), &DecodeErrorKind::UnknownCommand(c));
            assert_eq!(e.identifier(), None);
            assert_eq!(e.error_packet(), None);
        }
    }

    #[test]
    fn custom_limits() {
        let limits = DecoderLimits {
            min_token_len: 8,
            max_token_len: 100,
            max_payload_len: 256,
        };
        let mut n = note(P);
        n.token = vec![7; 100];
        let mut buf = BytesMut::new();
        encode(&n, BinaryFormat::Frame, &mut buf).unwrap();
        let got = NotificationDecoder::new(limits)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(got.notification, n);
        n.payload = Bytes::from(vec![b'x'; 257]);
        encode(&n, BinaryFormat::Frame, &mut buf).unwrap();
        let e = NotificationDecoder::new(limits)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(
            e.kind(),
            &DecodeErrorKind::PayloadTooLarge { len: 257, max: 256 }
        );
    }

    #[test]
    fn display_names_the_fault_and_identifier() {
        let e = DecodeError::new(
            DecodeErrorKind::PayloadTooLarge {
                len: 3000,
                max: 2048,
            },
            Some(BinaryFormat::Frame),
            Some(42),
        );
        assert_eq!(
            e.to_string(),
            "malformed binary APNs data: payload is 3000 bytes, limit 2048 (command 2, identifier 42)"
        );
    }

    #[test]
    fn identifier_after_the_faulty_item_is_still_reported() {
        // herald's encoder (like PushSharp's) writes the identifier after token and payload
        // (docs/apns-protocol.md#binary-command-2); the error packet must still name it.
        let items = [
            (1u8, vec![1; 33]),
            (2, P.to_vec()),
            (3, 77u32.to_be_bytes().to_vec()),
        ];
        let want = DecodeError::new(
            DecodeErrorKind::BadTokenLength {
                len: 33,
                min: 32,
                max: 32,
            },
            Some(BinaryFormat::Frame),
            Some(77),
        );
        check_error_at_every_split(&frame_of(&items), &want);
        let mut n = note(&vec![b'x'; 3000]);
        n.identifier = 1234;
        let bytes = encoded(&n, BinaryFormat::Frame);
        let mut buf = BytesMut::from(&bytes[..]);
        let e = NotificationDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(e.status(), Status::InvalidPayloadSize);
        assert_eq!(
            e.error_packet(),
            Some(ErrorPacket {
                status: Status::InvalidPayloadSize,
                identifier: 1234
            })
        );
    }

    #[test]
    fn finish_reports_what_the_stream_ended_inside() {
        let mut dec = NotificationDecoder::default();
        assert_eq!(dec.finish(&BytesMut::new()), None);
        // A complete notification is not an error.
        let whole = BytesMut::from(&encoded(&note(P), BinaryFormat::Frame)[..]);
        assert_eq!(dec.finish(&whole), None);
        // Half a valid enhanced notification.
        let half = BytesMut::from(&encoded(&note(P), BinaryFormat::Enhanced)[..20]);
        let e = dec.finish(&half).unwrap();
        assert_eq!(e.kind(), &DecodeErrorKind::Truncated { len: 20 });
        assert_eq!(
            (e.format(), e.identifier()),
            (Some(BinaryFormat::Enhanced), Some(0x0102_0304))
        );
        assert_eq!(e.status(), Status::ProtocolError);
        // A known fault waiting for the rest of its frame is reported as that fault.
        let items = [(1u8, vec![1; 33]), (2, P.to_vec())];
        let bytes = frame_of(&items);
        let mut partial = BytesMut::from(&bytes[..10]);
        assert_eq!(dec.decode(&mut partial), Ok(None));
        let e = dec.finish(&partial).unwrap();
        assert_eq!(
            e.kind(),
            &DecodeErrorKind::BadTokenLength {
                len: 33,
                min: 32,
                max: 32
            }
        );
        assert_eq!(partial.len(), 10, "finish leaves the buffer alone");
        // Half a frame whose identifier came first.
        let bytes = frame_of(&[
            (3u8, 5u32.to_be_bytes().to_vec()),
            (1, token()),
            (2, P.to_vec()),
        ]);
        let e = dec.finish(&BytesMut::from(&bytes[..30])).unwrap();
        assert_eq!(
            (e.kind(), e.identifier()),
            (&DecodeErrorKind::Truncated { len: 30 }, Some(5))
        );
    }

    proptest::proptest! {
        #[test]
        fn notification_decoder_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut dec = NotificationDecoder::default();
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            let _ = dec.finish(&buf);
        }

        #[test]
        fn structured_frames_never_panic(
            items in proptest::collection::vec((0u8..8, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..8),
            cut in 0usize..400,
        ) {
            let b = frame_of(&items);
            let b = &b[..cut.min(b.len())];
            let mut buf = BytesMut::from(b);
            let mut dec = NotificationDecoder::new(DecoderLimits { min_token_len: 1, max_token_len: 40, max_payload_len: 40 });
            let _ = dec.decode(&mut buf);
            let _ = dec.finish(&buf);
        }

        #[test]
        fn encode_decode_round_trip(
            id in proptest::num::u32::ANY,
            expiry in proptest::num::u32::ANY,
            prio in proptest::sample::select(vec![5u8, 10]),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 1..2049),
        ) {
            let n = BinaryNotification { identifier: id, expiry, priority: prio, token: token(), payload: Bytes::from(payload) };
            let mut buf = BytesMut::new();
            encode(&n, BinaryFormat::Frame, &mut buf).unwrap();
            let got = NotificationDecoder::default().decode(&mut buf).unwrap().unwrap();
            proptest::prop_assert_eq!(got.notification, n);
        }
    }
}
