//! A stand-in for herald-apns's `identity::CertificateInfo` (same names), used until that module lands there.

pub mod identity {
    use x509_parser::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CertEnvironment {
        Development,
        Production,
        Universal,
    }

    #[derive(Debug, Clone)]
    pub struct CertificateInfo {
        pub uid: Option<String>,
        pub topics: Vec<String>,
        pub environment: CertEnvironment,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("not an X.509 certificate: {0}")]
    pub struct CertError(String);

    impl CertificateInfo {
        pub fn from_der(der: &[u8]) -> Result<CertificateInfo, CertError> {
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError(e.to_string()))?;
            let uid_oid = oid_registry::Oid::from(&[0, 9, 2342, 19200300, 100, 1, 1])
                .map_err(|_| CertError("oid".into()))?;
            let uid = cert
                .subject()
                .iter_attributes()
                .find(|a| *a.attr_type() == uid_oid)
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned);
            let mut topics = Vec::new();
            let (mut dev, mut prod) = (false, false);
            for ext in cert.extensions() {
                let id = ext.oid.to_id_string();
                match id.as_str() {
                    "1.2.840.113635.100.6.3.1" => dev = true,
                    "1.2.840.113635.100.6.3.2" => prod = true,
                    "1.2.840.113635.100.6.3.6" => {
                        if let Ok((_, any)) = asn1_rs::Any::from_der(ext.value) {
                            let mut rest = any.data;
                            while let Ok((r, item)) = asn1_rs::Any::from_der(rest) {
                                if item.tag() == asn1_rs::Tag::Utf8String {
                                    if let Ok(s) = std::str::from_utf8(item.data) {
                                        topics.push(s.to_owned());
                                    }
                                }
                                rest = r;
                            }
                        }
                    }
                    _ => {}
                }
            }
            let environment = match (dev, prod) {
                (true, false) => CertEnvironment::Development,
                (false, true) => CertEnvironment::Production,
                _ => CertEnvironment::Universal,
            };
            Ok(CertificateInfo {
                uid,
                topics,
                environment,
            })
        }
    }
}
