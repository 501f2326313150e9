//! Stand-ins for herald-apns's `identity::CertificateInfo` and `provider_token` verification, with the same
//! names, used until those modules land in herald-apns.

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

pub mod provider_token {
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct TokenAuthError(String);

    #[derive(Debug, serde::Deserialize)]
    pub struct JwtHeader {
        pub alg: String,
        pub kid: String,
    }

    #[derive(Debug, serde::Deserialize)]
    pub struct JwtClaims {
        pub iss: String,
        pub iat: u64,
    }

    pub fn decode_unverified(jwt: &str) -> Result<(JwtHeader, JwtClaims), TokenAuthError> {
        let mut parts = jwt.split('.');
        let (Some(h), Some(c), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenAuthError("not three segments".into()));
        };
        let h = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|e| TokenAuthError(e.to_string()))?;
        let c = URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|e| TokenAuthError(e.to_string()))?;
        let header: JwtHeader =
            serde_json::from_slice(&h).map_err(|e| TokenAuthError(e.to_string()))?;
        if header.alg != "ES256" {
            return Err(TokenAuthError("alg is not ES256".into()));
        }
        let claims = serde_json::from_slice(&c).map_err(|e| TokenAuthError(e.to_string()))?;
        Ok((header, claims))
    }

    pub struct VerifyingKey(Vec<u8>);

    impl VerifyingKey {
        pub fn from_p8_pem(pem: &str) -> Result<VerifyingKey, TokenAuthError> {
            let der = crate::pki::first_pem_der(pem.as_bytes(), "PRIVATE KEY")
                .ok_or_else(|| TokenAuthError("no PRIVATE KEY block".into()))?;
            let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|e| TokenAuthError(e.to_string()))?;
            Ok(VerifyingKey(kp.public_key().as_ref().to_vec()))
        }

        pub fn verify(&self, jwt: &str) -> Result<JwtClaims, TokenAuthError> {
            let (_, claims) = decode_unverified(jwt)?;
            let dot = jwt
                .rfind('.')
                .ok_or_else(|| TokenAuthError("no signature".into()))?;
            let sig = URL_SAFE_NO_PAD
                .decode(&jwt[dot + 1..])
                .map_err(|e| TokenAuthError(e.to_string()))?;
            let msg = &jwt.as_bytes()[..dot];
            let alg: &dyn signature::VerificationAlgorithm = if sig.len() == 64 {
                &signature::ECDSA_P256_SHA256_FIXED
            } else {
                &signature::ECDSA_P256_SHA256_ASN1
            };
            UnparsedPublicKey::new(alg, &self.0)
                .verify(msg, &sig)
                .map_err(|_| TokenAuthError("bad signature".into()))?;
            Ok(claims)
        }
    }
}
