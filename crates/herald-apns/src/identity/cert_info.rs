//! What an APNs client certificate says about itself (docs/apns-protocol.md#certificates): subject, the UID that names
//! its default topic, the topics of extension 1.2.840.113635.100.6.3.6, the environment of extensions …6.3.1 / …6.3.2,
//! and the validity period.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityError;

const OID_UID: &str = "0.9.2342.19200300.100.1.1";
const OID_TOPICS: &str = "1.2.840.113635.100.6.3.6";
const OID_DEVELOPMENT: &str = "1.2.840.113635.100.6.3.1";
const OID_PRODUCTION: &str = "1.2.840.113635.100.6.3.2";

/// Which APNs environment a certificate may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertEnvironment {
    /// Only the development (sandbox) service: extension …6.3.1 alone.
    Development,
    /// Only production: extension …6.3.2 alone.
    Production,
    /// Both, or no marker at all (the universal "Sandbox & Production" certificate).
    Universal,
}

impl fmt::Display for CertEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertEnvironment::Development => "development (sandbox)",
            CertEnvironment::Production => "production",
            CertEnvironment::Universal => "universal (sandbox and production)",
        })
    }
}

/// Facts read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject distinguished name, as text.
    pub subject: String,
    /// The subject's UID attribute: the bundle id, the default topic.
    pub uid: Option<String>,
    /// Topics listed in extension 1.2.840.113635.100.6.3.6 (without their kind markers).
    pub topics: Vec<String>,
    pub environment: CertEnvironment,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate {
                detail: e.to_string(),
            })?;
        let subject = cert.subject().to_string();
        let uid = cert
            .subject()
            .iter_attributes()
            .find(|a| a.attr_type().to_id_string() == OID_UID)
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let mut topics = Vec::new();
        let (mut dev, mut prod) = (false, false);
        for ext in cert.extensions() {
            match ext.oid.to_id_string().as_str() {
                OID_TOPICS => {
                    topics =
                        parse_topics(ext.value).ok_or_else(|| IdentityError::BadCertificate {
                            detail:
                                "the APNs topics extension (1.2.840.113635.100.6.3.6) is malformed"
                                    .into(),
                        })?
                }
                OID_DEVELOPMENT => dev = true,
                OID_PRODUCTION => prod = true,
                _ => {}
            }
        }
        let environment = match (dev, prod) {
            (true, false) => CertEnvironment::Development,
            (false, true) => CertEnvironment::Production,
            _ => CertEnvironment::Universal,
        };
        Ok(CertificateInfo {
            subject,
            uid,
            topics,
            environment,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
        })
    }

    /// Refuses a certificate that has expired or is not yet valid at `now`.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), IdentityError> {
        if now > self.not_after {
            return Err(IdentityError::Expired {
                subject: self.subject.clone(),
                not_after: format_utc(self.not_after),
            });
        }
        if now < self.not_before {
            return Err(IdentityError::NotYetValid {
                subject: self.subject.clone(),
                not_before: format_utc(self.not_before),
            });
        }
        Ok(())
    }

    /// The default topic: the UID, else the first listed topic; an error names the certificate when it has
    /// neither.
    pub fn default_topic(&self) -> Result<&str, IdentityError> {
        self.uid
            .as_deref()
            .or(self.topics.first().map(String::as_str))
            .ok_or_else(|| IdentityError::NoTopic {
                subject: self.subject.clone(),
            })
    }

    /// Whether a connection authenticated by this certificate may push to `topic`: one of the listed topics
    /// when the certificate lists any, else the UID or the UID with `.voip` / `.complication` (the rule
    /// pushy's mock applies, docs/apns-protocol.md#certificates).
    pub fn allows_topic(&self, topic: &str) -> bool {
        if !self.topics.is_empty() {
            return self.topics.iter().any(|t| t == topic);
        }
        let Some(uid) = self.uid.as_deref() else {
            return false;
        };
        topic == uid
            || topic
                .strip_prefix(uid)
                .is_some_and(|rest| rest == ".voip" || rest == ".complication")
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC`, for error messages.
pub fn format_utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    // A certificate's times are at most year 9999 (ASN.1); anything beyond `time`'s range is shown as seconds.
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{secs} s after 1970-01-01 00:00:00 UTC"),
    }
}

/// Reads one DER TLV at the start of `b`: (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| acc << 8 | usize::from(x));
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// The topics extension: a SEQUENCE of string topics, each followed by a SEQUENCE naming its kind
/// (docs/apns-protocol.md#certificates). Strings of any of the usual string types are accepted; nested sequences are
/// skipped.
fn parse_topics(value: &[u8]) -> Option<Vec<String>> {
    let (tag, mut content, rest) = tlv(value)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let mut topics = Vec::new();
    while !content.is_empty() {
        let (tag, item, rest) = tlv(content)?;
        match tag {
            // UTF8String, PrintableString, IA5String
            0x0c | 0x13 | 0x16 => topics.push(std::str::from_utf8(item).ok()?.to_owned()),
            _ => {}
        }
        content = rest;
    }
    Some(topics)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// DER for the topics extension value, as in pushy's test CA (docs/apns-protocol.md#certificates).
    pub(crate) fn topics_extension(entries: &[(&str, &str)]) -> Vec<u8> {
        fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let len = content.len();
            if len < 0x80 {
                out.push(len as u8);
            } else if len < 0x100 {
                out.extend([0x81, len as u8]);
            } else {
                out.extend([0x82, (len >> 8) as u8, len as u8]);
            }
            out.extend_from_slice(content);
            out
        }
        let mut seq = Vec::new();
        for (topic, kind) in entries {
            seq.extend(wrap(0x0c, topic.as_bytes()));
            seq.extend(wrap(0x30, &wrap(0x0c, kind.as_bytes())));
        }
        wrap(0x30, &seq)
    }

    #[test]
    fn topics_extension_parsing() {
        let der = topics_extension(&[("com.example.app", "app"), ("com.example.app.voip", "voip")]);
        assert_eq!(
            parse_topics(&der).unwrap(),
            vec!["com.example.app", "com.example.app.voip"]
        );
        // Long form length.
        let many: Vec<(String, &str)> = (0..20)
            .map(|i| (format!("com.example.app{i}"), "app"))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(t, k)| (t.as_str(), *k)).collect();
        assert_eq!(parse_topics(&topics_extension(&refs)).unwrap().len(), 20);
        assert_eq!(parse_topics(&[0x30, 0x05, 0x0c]), None);
        assert_eq!(parse_topics(&[0x31, 0x00]), None);
        assert_eq!(parse_topics(&[]), None);
        assert_eq!(parse_topics(&[0x30, 0x00]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(
            format_utc(UNIX_EPOCH - Duration::from_secs(86_400)),
            "1969-12-31 00:00:00 UTC"
        );
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
            "9999-12-31 23:59:59 UTC"
        );
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            "1099511627776 s after 1970-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn topic_rules_without_extension() {
        let info = CertificateInfo {
            subject: "UID=com.example.app".into(),
            uid: Some("com.example.app".into()),
            topics: vec![],
            environment: CertEnvironment::Universal,
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH,
        };
        assert!(info.allows_topic("com.example.app"));
        assert!(info.allows_topic("com.example.app.voip"));
        assert!(info.allows_topic("com.example.app.complication"));
        assert!(!info.allows_topic("com.example.app.other"));
        assert!(!info.allows_topic("com.example.ap"));
        assert_eq!(info.default_topic().unwrap(), "com.example.app");
        let none = CertificateInfo { uid: None, ..info };
        assert!(!none.allows_topic("com.example.app"));
        assert!(matches!(
            none.default_topic(),
            Err(IdentityError::NoTopic { .. })
        ));
    }
}
