//! Feedback-service tuples (docs/apns-protocol.md#feedback-service): encoding for the server side, incremental decoding
//! for clients.

use bytes::{Buf, BufMut, BytesMut};

use super::decode::{be16, be32};
use super::{DecodeError, DecodeErrorKind, EncodeError};

/// One feedback-service record (docs/apns-protocol.md#feedback-service): when APNs learnt the app was gone, and the
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackTuple {
    /// Seconds since the epoch.
    pub timestamp: u32,
    pub token: Vec<u8>,
}

impl FeedbackTuple {
    /// Encoded size: 6 + token length (38 for a 32-byte token).
    pub fn encoded_len(&self) -> usize {
        6 + self.token.len()
    }

    /// Appends the tuple to `out`. Fails only when the token does not fit the 16-bit length field.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = u16::try_from(self.token.len()).map_err(|_| EncodeError::TokenTooLong {
            len: self.token.len(),
        })?;
        out.reserve(self.encoded_len());
        out.put_u32(self.timestamp);
        out.put_u16(len);
        out.put_slice(&self.token);
        Ok(())
    }
}

/// Incremental client-side decoder of feedback tuples. Tokens of 1..=100 bytes are accepted by default
/// (the archived documentation allowed up to 100).
#[derive(Debug, Clone)]
pub struct FeedbackDecoder {
    min_token_len: usize,
    max_token_len: usize,
}

impl Default for FeedbackDecoder {
    fn default() -> Self {
        FeedbackDecoder {
            min_token_len: 1,
            max_token_len: 100,
        }
    }
}

impl FeedbackDecoder {
    pub fn new() -> FeedbackDecoder {
        FeedbackDecoder::default()
    }

    /// Accepts only tokens whose length lies in `min..=max` (use 32..=32 to be strict).
    pub fn with_token_len(min: usize, max: usize) -> FeedbackDecoder {
        FeedbackDecoder {
            min_token_len: min.max(1),
            max_token_len: max,
        }
    }

    /// Takes one tuple off the front of `buf`, or returns `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FeedbackTuple>, DecodeError> {
        let b = &buf[..];
        let (Some(timestamp), Some(len)) = (be32(b, 0), be16(b, 4)) else {
            return Ok(None);
        };
        if len == 0 {
            return Err(DecodeError::new(DecodeErrorKind::MissingToken, None, None));
        }
        if len < self.min_token_len || len > self.max_token_len {
            let kind = DecodeErrorKind::BadTokenLength {
                len,
                min: self.min_token_len,
                max: self.max_token_len,
            };
            return Err(DecodeError::new(kind, None, None));
        }
        if b.len() < 6 + len {
            return Ok(None);
        }
        buf.advance(6);
        let token = buf.split_to(len).to_vec();
        Ok(Some(FeedbackTuple { timestamp, token }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::token;
    use super::*;

    #[test]
    fn feedback_tuple_layout_and_every_split() {
        // docs/apns-protocol.md#feedback-service: |timestamp u32|len u16|token|, 38 bytes for a 32-byte token.
        let t = FeedbackTuple {
            timestamp: 1_300_000_000,
            token: token(),
        };
        let mut out = BytesMut::new();
        t.encode(&mut out).unwrap();
        assert_eq!(out.len(), 38);
        assert_eq!(&out[..6], &[0x4d, 0x7c, 0x6d, 0x00, 0, 32]);
        assert_eq!(&out[6..], &token()[..]);
        let mut stream = out.to_vec();
        let t2 = FeedbackTuple {
            timestamp: 7,
            token: vec![0xaa; 32],
        };
        let mut more = BytesMut::new();
        t2.encode(&mut more).unwrap();
        stream.extend_from_slice(&more);
        for split in 0..=stream.len() {
            let mut dec = FeedbackDecoder::new();
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got = Vec::new();
            while let Some(x) = dec.decode(&mut buf).unwrap() {
                got.push(x);
            }
            buf.extend_from_slice(&stream[split..]);
            while let Some(x) = dec.decode(&mut buf).unwrap() {
                got.push(x);
            }
            assert_eq!(got, vec![t.clone(), t2.clone()], "split {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn feedback_errors() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0][..]);
        assert_eq!(
            FeedbackDecoder::new().decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::MissingToken
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 101][..]);
        assert!(FeedbackDecoder::new().decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 31][..]);
        assert_eq!(
            FeedbackDecoder::with_token_len(32, 32)
                .decode(&mut buf)
                .unwrap_err()
                .kind(),
            &DecodeErrorKind::BadTokenLength {
                len: 31,
                min: 32,
                max: 32
            }
        );
        let t = FeedbackTuple {
            timestamp: 0,
            token: vec![0; 70_000],
        };
        assert!(t.encode(&mut BytesMut::new()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn feedback_decoder_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut dec = FeedbackDecoder::new();
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
