//! Device tokens: parsing from hex, formatting back to hex, and a redacted form for logs.
//!
//! HTTP/2 puts the token in the request path as hex (docs/apns-protocol.md#http2-request); the binary protocol carries
//! raw bytes with a length field (docs/apns-protocol.md#binary-command-0, docs/apns-protocol.md#binary-command-1,
//! docs/apns-protocol.md#binary-command-2). The two differ in the sizes they take (docs/apns-protocol.md#size-limits):
//!
//! - The binary protocol documents 32-byte tokens, and herald sends it nothing else ([`DeviceToken::check_binary`]).
//! - On HTTP/2 Apple asks providers to make no assumption about a token's size. The tokens APNs issues are 32 bytes
//!   or longer (54-byte tokens are in use, and Live Activity push tokens are 80 bytes in practice), and Apple's later
//!   text reserves up to 100 bytes, so herald takes tokens of [`TOKEN_MIN_LEN`] to [`TOKEN_MAX_LEN`] bytes there
//!   ([`DeviceToken::check_apns`]) and leaves it to APNs to say whether a token of such a size is one it knows.
//!   A shorter one is no token APNs issued (a token cut short, or an SMTP local part such as `cafe` that happens to
//!   be hex), and is refused at the door rather than sent to be answered `BadDeviceToken`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Length in bytes of a device token on the binary protocol (docs/apns-protocol.md#size-limits).
pub const BINARY_TOKEN_LEN: usize = 32;
/// Shortest device token herald sends over HTTP/2, in bytes: the size of the shortest tokens APNs issues
/// (docs/apns-protocol.md#size-limits).
pub const TOKEN_MIN_LEN: usize = 32;
/// Longest device token herald sends over HTTP/2, in bytes: the most Apple's text reserves for a token
/// (docs/apns-protocol.md#size-limits).
pub const TOKEN_MAX_LEN: usize = 100;

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Why a device token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("device token is empty")]
    Empty,
    #[error("device token has an odd number of hex digits ({digits})")]
    OddLength { digits: usize },
    #[error("device token has a non-hex character {found:?} at position {position}")]
    InvalidHexDigit { position: usize, found: char },
    #[error("device token is {len} bytes; the binary protocol needs exactly {BINARY_TOKEN_LEN}")]
    WrongBinaryLength { len: usize },
    #[error(
        "device token is {len} bytes ({} hex digits); APNs over HTTP/2 takes tokens of {TOKEN_MIN_LEN} to \
         {TOKEN_MAX_LEN} bytes ({} to {} hex digits)",
        len * 2,
        TOKEN_MIN_LEN * 2,
        TOKEN_MAX_LEN * 2
    )]
    WrongLength { len: usize },
}

/// Whether a token of `len` bytes may go over HTTP/2 ([`TOKEN_MIN_LEN`] to [`TOKEN_MAX_LEN`] bytes).
pub fn apns_length_ok(len: usize) -> bool {
    (TOKEN_MIN_LEN..=TOKEN_MAX_LEN).contains(&len)
}

/// A device token as raw bytes. `Display` gives the full lowercase hex; use [`DeviceToken::redacted`] in
/// info-level logs. `Debug` is redacted too, so a token never leaks whole through `{:?}`.
///
/// The bytes are shared: a clone (the request of each delivery attempt, a log record, an invalid-token report)
/// is a reference count, never a copy of the token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceToken(Arc<[u8]>);

/// Value of one ASCII hex digit, either case.
#[inline]
pub fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Checks that `hex` is a well-formed token (non-empty, even length, hex digits of either case) without
/// allocating, and returns the number of bytes it encodes.
pub fn validate_hex(hex: &str) -> Result<usize, TokenError> {
    let b = hex.as_bytes();
    if b.is_empty() {
        return Err(TokenError::Empty);
    }
    if let Some(position) = b.iter().position(|&c| hex_value(c).is_none()) {
        return Err(invalid_digit(hex, position));
    }
    if !b.len().is_multiple_of(2) {
        return Err(TokenError::OddLength { digits: b.len() });
    }
    Ok(b.len() / 2)
}

fn invalid_digit(hex: &str, byte_pos: usize) -> TokenError {
    // Report the character (not the byte) found there; the position is a byte offset.
    let found = hex
        .get(byte_pos..)
        .and_then(|s| s.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER);
    TokenError::InvalidHexDigit {
        position: byte_pos,
        found,
    }
}

impl DeviceToken {
    /// Parses even-length hex of either case. One allocation for the result, none per character.
    pub fn from_hex(hex: &str) -> Result<DeviceToken, TokenError> {
        let len = validate_hex(hex)?;
        let mut bytes = Vec::with_capacity(len);
        for pair in hex.as_bytes().chunks_exact(2) {
            // validate_hex checked every digit.
            let hi = hex_value(pair[0]).unwrap_or(0);
            let lo = hex_value(pair[1]).unwrap_or(0);
            bytes.push(hi << 4 | lo);
        }
        Ok(DeviceToken(bytes.into()))
    }

    /// Wraps raw bytes (as read from a binary frame or a feedback tuple). Refuses an empty token.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<DeviceToken, TokenError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(DeviceToken(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// Length in bytes (half the hex length).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a constructed token; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 2);
        self.write_hex(&mut s);
        s
    }

    /// Appends the full lowercase hex to `out` (for building a `:path` without an intermediate string).
    pub fn write_hex(&self, out: &mut String) {
        out.reserve(self.0.len() * 2);
        // Digits go through a stack buffer a chunk at a time: one append per chunk, not a char push per digit.
        let mut digits = [0u8; 64];
        for chunk in self.0.chunks(digits.len() / 2) {
            for (pair, &b) in digits.chunks_exact_mut(2).zip(chunk) {
                pair[0] = HEX_LOWER[usize::from(b >> 4)];
                pair[1] = HEX_LOWER[usize::from(b & 0x0f)];
            }
            if let Ok(text) = std::str::from_utf8(&digits[..2 * chunk.len()]) {
                out.push_str(text);
            }
        }
    }

    /// A `Display` showing only the first 8 hex digits followed by "…", for info-level logs.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(&self.0)
    }

    /// Whether the token's size is one HTTP/2 takes: [`TOKEN_MIN_LEN`] to [`TOKEN_MAX_LEN`] bytes (see the module
    /// documentation). The binary protocol is narrower: see [`DeviceToken::check_binary`].
    pub fn check_apns(&self) -> Result<(), TokenError> {
        if apns_length_ok(self.0.len()) {
            Ok(())
        } else {
            Err(TokenError::WrongLength { len: self.0.len() })
        }
    }

    /// The binary protocol accepts exactly 32-byte tokens (docs/apns-protocol.md#binary-command-0,
    /// docs/apns-protocol.md#size-limits).
    pub fn check_binary(&self) -> Result<(), TokenError> {
        if self.0.len() == BINARY_TOKEN_LEN {
            Ok(())
        } else {
            Err(TokenError::WrongBinaryLength { len: self.0.len() })
        }
    }
}

impl FromStr for DeviceToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceToken::from_hex(s)
    }
}

impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceToken({})", self.redacted())
    }
}

/// Shows the first 4 bytes (8 hex digits) of a token and an ellipsis.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(&'a [u8]);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter().take(4) {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T64: &str = "0123456789ABCDEFabcdef0123456789abcdef0123456789ABCDEF0123456789";

    #[test]
    fn parses_either_case_and_formats_lowercase() {
        let t = DeviceToken::from_hex(T64).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(t.to_hex(), T64.to_ascii_lowercase());
        assert_eq!(t.to_string(), T64.to_ascii_lowercase());
        assert_eq!(t.as_bytes()[0], 0x01);
        assert_eq!(t.as_bytes()[7], 0xef);
        assert!(t.check_binary().is_ok());
    }

    #[test]
    fn any_even_length_parses_http2_takes_32_to_100_bytes_and_binary_only_32() {
        let t: DeviceToken = "abcd".parse().unwrap();
        assert_eq!(t.as_bytes(), &[0xab, 0xcd]);
        assert_eq!(
            t.check_binary(),
            Err(TokenError::WrongBinaryLength { len: 2 })
        );
        assert_eq!(t.check_apns(), Err(TokenError::WrongLength { len: 2 }));
        // HTTP/2: 32 to 100 bytes (54 and 80 are sizes issued beside 32); the binary protocol: 32 only.
        for (bytes, http2, binary) in [
            (1, false, false),
            (2, false, false),
            (31, false, false),
            (32, true, true),
            (33, true, false),
            (54, true, false),
            (80, true, false),
            (100, true, false),
            (101, false, false),
            (200, false, false),
        ] {
            let t = DeviceToken::from_hex(&"ab".repeat(bytes)).unwrap();
            assert_eq!(t.len(), bytes);
            assert_eq!(t.check_apns().is_ok(), http2, "{bytes} bytes over HTTP/2");
            assert_eq!(
                t.check_binary().is_ok(),
                binary,
                "{bytes} bytes over binary"
            );
        }
        for bytes in [31, 101] {
            assert_eq!(
                DeviceToken::from_hex(&"ab".repeat(bytes))
                    .unwrap()
                    .check_apns(),
                Err(TokenError::WrongLength { len: bytes })
            );
        }
        assert_eq!(
            TokenError::WrongLength { len: 101 }.to_string(),
            "device token is 101 bytes (202 hex digits); APNs over HTTP/2 takes tokens of 32 to 100 bytes \
             (64 to 200 hex digits)"
        );
        assert_eq!(
            TokenError::WrongLength { len: 31 }.to_string(),
            "device token is 31 bytes (62 hex digits); APNs over HTTP/2 takes tokens of 32 to 100 bytes \
             (64 to 200 hex digits)"
        );
        assert_eq!(
            TokenError::WrongBinaryLength { len: 80 }.to_string(),
            "device token is 80 bytes; the binary protocol needs exactly 32"
        );
    }

    #[test]
    fn rejects_malformed_hex() {
        assert_eq!(DeviceToken::from_hex(""), Err(TokenError::Empty));
        assert_eq!(
            DeviceToken::from_hex("abc"),
            Err(TokenError::OddLength { digits: 3 })
        );
        assert_eq!(
            DeviceToken::from_hex("abzd"),
            Err(TokenError::InvalidHexDigit {
                position: 2,
                found: 'z'
            })
        );
        assert_eq!(
            DeviceToken::from_hex("ab\u{e9}d"),
            Err(TokenError::InvalidHexDigit {
                position: 2,
                found: '\u{e9}'
            })
        );
        assert!(DeviceToken::from_hex("ab cd").is_err());
        assert!(DeviceToken::from_hex("0x12").is_err());
        assert_eq!(DeviceToken::from_bytes(Vec::new()), Err(TokenError::Empty));
    }

    #[test]
    fn redacted_shows_only_a_prefix() {
        let t = DeviceToken::from_hex(T64).unwrap();
        assert_eq!(t.redacted().to_string(), "01234567…");
        let dbg = format!("{t:?}");
        assert_eq!(dbg, "DeviceToken(01234567…)");
        assert!(!dbg.contains("89abcdef0123"));
        let short = DeviceToken::from_hex("abcd").unwrap();
        assert_eq!(short.redacted().to_string(), "abcd…");
    }

    #[test]
    fn write_hex_appends() {
        let t = DeviceToken::from_bytes(vec![0x00, 0xff, 0x10]).unwrap();
        let mut s = String::from("/3/device/");
        t.write_hex(&mut s);
        assert_eq!(s, "/3/device/00ff10");
        // Longer than one 32-byte chunk of the buffer, as tokens of up to 100 bytes are.
        let bytes: Vec<u8> = (0..=99).collect();
        let mut s = String::new();
        DeviceToken::from_bytes(bytes.clone())
            .unwrap()
            .write_hex(&mut s);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, expected);
    }

    #[test]
    fn validate_hex_counts_bytes() {
        assert_eq!(validate_hex(T64), Ok(32));
        assert_eq!(
            validate_hex("zz"),
            Err(TokenError::InvalidHexDigit {
                position: 0,
                found: 'z'
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..80)) {
            let t = DeviceToken::from_bytes(bytes.clone()).unwrap();
            let back = DeviceToken::from_hex(&t.to_hex()).unwrap();
            proptest::prop_assert_eq!(back.as_bytes(), &bytes[..]);
            let upper = DeviceToken::from_hex(&t.to_hex().to_ascii_uppercase()).unwrap();
            proptest::prop_assert_eq!(upper, t);
        }

        #[test]
        fn never_panics_on_arbitrary_text(s in ".*") {
            let _ = DeviceToken::from_hex(&s);
        }
    }
}
