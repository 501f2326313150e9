//! The 6-byte error-response packet, command 8 (docs/apns-protocol.md#binary-error-packet).

use super::{DecodeError, DecodeErrorKind, Status};

/// Command byte of the error-response packet.
pub const ERROR_PACKET_COMMAND: u8 = 8;
/// Size of the error-response packet.
pub const ERROR_PACKET_LEN: usize = 6;

/// The 6-byte error response (docs/apns-protocol.md#binary-error-packet): command 8, status, identifier of the failed
/// notification (for status 10: of the last one accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPacket {
    pub status: Status,
    pub identifier: u32,
}

impl ErrorPacket {
    pub fn encode(&self) -> [u8; ERROR_PACKET_LEN] {
        let id = self.identifier.to_be_bytes();
        [
            ERROR_PACKET_COMMAND,
            self.status.code(),
            id[0],
            id[1],
            id[2],
            id[3],
        ]
    }

    /// Reads exactly 6 bytes starting with command 8. A status code APNs never defined is read as
    /// [`Status::Unknown`] so the identifier is not lost.
    pub fn decode(bytes: &[u8]) -> Result<ErrorPacket, DecodeError> {
        if bytes.len() != ERROR_PACKET_LEN {
            return Err(DecodeError::new(
                DecodeErrorKind::ErrorPacketLength(bytes.len()),
                None,
                None,
            ));
        }
        if bytes[0] != ERROR_PACKET_COMMAND {
            return Err(DecodeError::new(
                DecodeErrorKind::NotAnErrorPacket { command: bytes[0] },
                None,
                None,
            ));
        }
        let status = Status::from_code(bytes[1]).unwrap_or(Status::Unknown);
        let identifier = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        Ok(ErrorPacket { status, identifier })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_packet_layout() {
        // docs/apns-protocol.md#binary-error-packet: |8|status|identifier|, 6 bytes.
        for s in Status::ALL {
            let p = ErrorPacket {
                status: s,
                identifier: 0xdead_beef,
            };
            let b = p.encode();
            assert_eq!(b, [8, s.code(), 0xde, 0xad, 0xbe, 0xef]);
            assert_eq!(ErrorPacket::decode(&b).unwrap(), p);
        }
        assert_eq!(
            ErrorPacket::decode(&[8, 9, 0, 0, 0, 1]).unwrap(),
            ErrorPacket {
                status: Status::Unknown,
                identifier: 1
            }
        );
        assert_eq!(
            ErrorPacket::decode(&[8, 8, 0, 0, 0]).unwrap_err().kind(),
            &DecodeErrorKind::ErrorPacketLength(5)
        );
        assert_eq!(
            ErrorPacket::decode(&[8, 8, 0, 0, 0, 0, 0])
                .unwrap_err()
                .kind(),
            &DecodeErrorKind::ErrorPacketLength(7)
        );
        assert_eq!(
            ErrorPacket::decode(&[2, 8, 0, 0, 0, 0]).unwrap_err().kind(),
            &DecodeErrorKind::NotAnErrorPacket { command: 2 }
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..12)) {
            let _ = ErrorPacket::decode(&data);
        }
    }
}
