//! The stored form of a final outcome: a small binary record, written by the status book's writer thread for
//! every notification that finishes, and read back by status lookups.
//!
//! Layout (integers little-endian): version byte 1; flags (1 delivered, 2 invalid token, 4 status present,
//! 8 unregistered time present); accepted_at u64; finished_at u64; attempts u32; status u16 and unregistered_at_ms
//! u64 when flagged; then the id, domain, device token (raw bytes), APNs id, APNs unique id, reason and last
//! transient reason, each as a u16 length and its bytes, 0xFFFF for an absent one. Records stored as JSON by
//! earlier versions (first byte `{`) still read.

use herald_apns::token_hex::DeviceToken;

use super::book::Status;

const VERSION: u8 = 1;
const DELIVERED: u8 = 1;
const INVALID_TOKEN: u8 = 2;
const HAS_STATUS: u8 = 4;
const HAS_UNREGISTERED: u8 = 8;
const ABSENT: u16 = u16::MAX;

/// Why a stored outcome cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early, at byte {0}")]
    Truncated(usize),
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("a text field is not UTF-8")]
    NotUtf8,
    #[error("old JSON record: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a final outcome record holds.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub id: &'a str,
    pub domain: &'a str,
    pub token: &'a [u8],
    pub accepted_at: u64,
    pub attempts: u32,
    pub last_reason: Option<&'a str>,
    pub delivered: bool,
    pub invalid_token: bool,
    pub finished_at: u64,
    pub status: Option<u16>,
    pub unregistered_at_ms: Option<u64>,
    pub apns_id: Option<&'a str>,
    pub apns_unique_id: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// Appends the record of `f` to `out`. Text longer than 65,534 bytes is cut (no field herald stores comes near).
pub fn encode(f: &Fields<'_>, out: &mut Vec<u8>) {
    let mut flags = 0;
    if f.delivered {
        flags |= DELIVERED;
    }
    if f.invalid_token {
        flags |= INVALID_TOKEN;
    }
    if f.status.is_some() {
        flags |= HAS_STATUS;
    }
    if f.unregistered_at_ms.is_some() {
        flags |= HAS_UNREGISTERED;
    }
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&f.accepted_at.to_le_bytes());
    out.extend_from_slice(&f.finished_at.to_le_bytes());
    out.extend_from_slice(&f.attempts.to_le_bytes());
    if let Some(s) = f.status {
        out.extend_from_slice(&s.to_le_bytes());
    }
    if let Some(u) = f.unregistered_at_ms {
        out.extend_from_slice(&u.to_le_bytes());
    }
    bytes(out, Some(f.id.as_bytes()));
    bytes(out, Some(f.domain.as_bytes()));
    bytes(out, Some(f.token));
    for text in [f.apns_id, f.apns_unique_id, f.reason, f.last_reason] {
        bytes(out, text.map(str::as_bytes));
    }
}

fn bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            let b = &b[..b.len().min(ABSENT as usize - 1)];
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(DecodeError::Truncated(self.buf.len()))?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Ok(b)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let len = u16::from_le_bytes(self.array()?);
        if len == ABSENT {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }
    fn text(&mut self) -> Result<Option<String>, DecodeError> {
        match self.bytes()? {
            Some(b) => std::str::from_utf8(b)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| DecodeError::NotUtf8),
            None => Ok(None),
        }
    }
}

/// The status a stored record describes.
pub fn decode(record: &[u8]) -> Result<Status, DecodeError> {
    match record.first() {
        Some(b'{') => return Ok(serde_json::from_slice(record)?),
        Some(&VERSION) => {}
        Some(&v) => return Err(DecodeError::Version(v)),
        None => return Err(DecodeError::Truncated(0)),
    }
    let mut r = Reader { buf: record, at: 1 };
    let [flags] = r.array()?;
    let accepted_at = u64::from_le_bytes(r.array()?);
    let finished_at = u64::from_le_bytes(r.array()?);
    let attempts = u32::from_le_bytes(r.array()?);
    let status = if flags & HAS_STATUS != 0 {
        Some(u16::from_le_bytes(r.array()?))
    } else {
        None
    };
    let unregistered_at_ms = if flags & HAS_UNREGISTERED != 0 {
        Some(u64::from_le_bytes(r.array()?))
    } else {
        None
    };
    let id = r.text()?.unwrap_or_default();
    let domain = r.text()?.unwrap_or_default();
    let token = r
        .bytes()?
        .and_then(|b| DeviceToken::from_bytes(b).ok())
        .map(|t| t.to_hex())
        .unwrap_or_default();
    let delivered = flags & DELIVERED != 0;
    Ok(Status {
        id,
        state: if delivered { "delivered" } else { "failed" }.to_owned(),
        domain,
        token,
        accepted_at,
        attempts,
        apns_id: r.text()?,
        apns_unique_id: r.text()?,
        reason: r.text()?,
        last_reason: r.text()?,
        next_attempt_at: None,
        finished_at: Some(finished_at),
        status,
        invalid_token: flags & INVALID_TOKEN != 0,
        unregistered_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Fields<'static> {
        Fields {
            id: "03/AB-00123-12345678",
            domain: "push.example",
            token: &[0xab, 0xcd, 0x01],
            accepted_at: 1_800_000_000,
            attempts: 2,
            last_reason: Some("connection lost"),
            delivered: false,
            invalid_token: true,
            finished_at: 1_800_000_005,
            status: Some(410),
            unregistered_at_ms: Some(1_799_999_000_123),
            apns_id: Some("7C1B0B2E-9A51-4F5B-8E1C-2D6A4B3F0001"),
            apns_unique_id: None,
            reason: Some("Unregistered"),
        }
    }

    #[test]
    fn a_failure_reads_back_field_for_field() {
        let mut buf = Vec::new();
        encode(&failed(), &mut buf);
        let s = decode(&buf).unwrap();
        assert_eq!(s.id, "03/AB-00123-12345678");
        assert_eq!(
            (s.state.as_str(), s.domain.as_str(), s.token.as_str()),
            ("failed", "push.example", "abcd01")
        );
        assert_eq!(
            (s.accepted_at, s.finished_at, s.attempts),
            (1_800_000_000, Some(1_800_000_005), 2)
        );
        assert_eq!(
            (s.status, s.unregistered_at_ms, s.invalid_token),
            (Some(410), Some(1_799_999_000_123), true)
        );
        assert_eq!(
            s.apns_id.as_deref(),
            Some("7C1B0B2E-9A51-4F5B-8E1C-2D6A4B3F0001")
        );
        assert_eq!(
            (s.apns_unique_id, s.reason.as_deref()),
            (None, Some("Unregistered"))
        );
        assert_eq!(
            (s.last_reason.as_deref(), s.next_attempt_at),
            (Some("connection lost"), None)
        );
    }

    #[test]
    fn a_delivery_without_optional_fields_reads_back() {
        let f = Fields {
            delivered: true,
            invalid_token: false,
            status: None,
            unregistered_at_ms: None,
            reason: None,
            last_reason: None,
            apns_unique_id: Some("u-1"),
            ..failed()
        };
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        let s = decode(&buf).unwrap();
        assert_eq!(s.state, "delivered");
        assert_eq!(
            (
                s.status,
                s.unregistered_at_ms,
                s.reason.as_deref(),
                s.last_reason.as_deref()
            ),
            (None, None, None, None)
        );
        assert_eq!(s.apns_unique_id.as_deref(), Some("u-1"));
        assert!(s.is_final());
    }

    #[test]
    fn every_cut_of_a_record_is_an_error_not_a_panic_and_old_json_still_reads() {
        let mut buf = Vec::new();
        encode(&failed(), &mut buf);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "cut at {n}");
        }
        assert!(matches!(decode(&[9, 0]), Err(DecodeError::Version(9))));
        let old = br#"{"id":"00/00-1-00000001","state":"delivered","domain":"d","token":"ab","accepted_at":1,"attempts":0,"finished_at":2,"apns_id":"x"}"#;
        let s = decode(old).unwrap();
        assert_eq!(
            (s.state.as_str(), s.apns_id.as_deref()),
            ("delivered", Some("x"))
        );
    }
}
