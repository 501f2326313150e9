//! TLS identities for certificate-based APNs connections (docs/apns-protocol.md#certificates): loading a certificate
//! chain and key from PEM files or a PKCS#12 bundle, checking that they belong together, reading what the certificate
//! says (see [`CertificateInfo`]), and building rustls client configurations (see [`client_config`]).

mod cert_info;
mod tls;

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

pub use cert_info::{CertEnvironment, CertificateInfo, format_utc};
pub use tls::{RootSource, client_config};

/// What was wrong with an identity, a certificate or a TLS setting. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: malformed PEM: {detail}")]
    Pem { path: String, detail: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: String },
    #[error(
        "{path}: no private key found (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY expected)"
    )]
    NoPrivateKey { path: String },
    #[error(
        "{path}: the private key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
    )]
    EncryptedKey { path: String },
    #[error("{path}: wrong PKCS#12 password")]
    WrongPassword { path: String },
    #[error("{path}: cannot read PKCS#12: {detail}")]
    Pkcs12 { path: String, detail: String },
    #[error("{path}: the PKCS#12 file holds no private key with its certificate")]
    Pkcs12NoKey { path: String },
    #[error(
        "{path}: the PKCS#12 file holds {} identities (private key with certificate): {}; herald cannot tell \
         which one the route needs; export only the push certificate of the route's environment with its key (in \
         Keychain Access, select that one certificate, then export it)",
        .identities.len(),
        describe_identities(.identities)
    )]
    Pkcs12SeveralKeys {
        path: String,
        /// Each identity's alias (friendly name) and its certificate's subject, in the file's alias order.
        identities: Vec<(String, String)>,
    },
    #[error("{path}: the private key does not match the certificate's public key")]
    KeyMismatch { path: String },
    #[error("unsupported private key: {detail}")]
    UnsupportedKey { detail: String },
    #[error("cannot parse certificate: {detail}")]
    BadCertificate { detail: String },
    #[error("certificate {subject:?} expired at {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("certificate {subject:?} is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error(
        "certificate {subject:?} names no topic (no UID in its subject and no topics extension)"
    )]
    NoTopic { subject: String },
    #[error("{path}: no CA certificate found")]
    NoCaCertificate { path: String },
    #[error(
        "the certificate is X.509 version {version}, and TLS client authentication accepts only version 3; \
         issue it again as version 3 (with openssl: `openssl x509 -req … -extfile v3.ext`, where v3.ext holds at \
         least `basicConstraints = CA:FALSE`)"
    )]
    NotVersion3 { version: u32 },
    #[error("the TLS library refuses the client certificate or its key: {detail}")]
    ClientAuthRefused { detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// `"alias" (subject …)` for each identity of a PKCS#12 file, for [`IdentityError::Pkcs12SeveralKeys`].
fn describe_identities(identities: &[(String, String)]) -> String {
    identities
        .iter()
        .map(|(alias, subject)| format!("{alias:?} (subject {subject})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A certificate chain (leaf first) and its private key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })
}

impl ClientIdentity {
    /// Loads PEM files: the certificate chain from `cert`, the key from `key` or, when `None`, from `cert`.
    pub fn from_pem_files(
        cert: &Path,
        key: Option<&Path>,
    ) -> Result<ClientIdentity, IdentityError> {
        let cert_pem = read(cert)?;
        let cert_name = cert.display().to_string();
        match key {
            Some(key_path) => {
                let key_pem = read(key_path)?;
                ClientIdentity::from_pem(
                    &cert_pem,
                    &cert_name,
                    Some((&key_pem, &key_path.display().to_string())),
                )
            }
            None => ClientIdentity::from_pem(&cert_pem, &cert_name, None),
        }
    }

    /// Loads PEM data. `cert_name` / the key's name label error messages; with no key data the key is
    /// looked for in `cert_pem`.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_name: &str,
        key: Option<(&[u8], &str)>,
    ) -> Result<ClientIdentity, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Pem {
                path: cert_name.into(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(IdentityError::NoCertificate {
                path: cert_name.into(),
            });
        }
        let (key_pem, key_name) = key.unwrap_or((cert_pem, cert_name));
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(k) => k,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(
                    if contains(key_pem, b"ENCRYPTED PRIVATE KEY")
                        || contains(key_pem, b"Proc-Type: 4,ENCRYPTED")
                    {
                        IdentityError::EncryptedKey {
                            path: key_name.into(),
                        }
                    } else {
                        IdentityError::NoPrivateKey {
                            path: key_name.into(),
                        }
                    },
                );
            }
            Err(e) => {
                return Err(IdentityError::Pem {
                    path: key_name.into(),
                    detail: e.to_string(),
                });
            }
        };
        let mut identity = ClientIdentity { chain, key };
        identity.check_key_matches(key_name)?;
        identity.check_version()?;
        Ok(identity)
    }

    /// Loads a PKCS#12 (.p12/.pfx) file, modern (PBES2/AES) or legacy (RC2, 3DES); `""` for no password. The file
    /// must hold exactly one identity (private key with its certificate); extra CA certificates are fine.
    pub fn from_pkcs12(path: &Path, password: &str) -> Result<ClientIdentity, IdentityError> {
        ClientIdentity::from_pkcs12_der(&read(path)?, password, &path.display().to_string())
    }

    /// Loads PKCS#12 data; `name` labels error messages.
    pub fn from_pkcs12_der(
        der: &[u8],
        password: &str,
        name: &str,
    ) -> Result<ClientIdentity, IdentityError> {
        use p12_keystore::error::Error as P12Error;
        let store = p12_keystore::KeyStore::from_pkcs12(
            der,
            password,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .map_err(|e| match e {
            P12Error::MacError(_) | P12Error::UnpadError => {
                IdentityError::WrongPassword { path: name.into() }
            }
            other => IdentityError::Pkcs12 {
                path: name.into(),
                detail: other.to_string(),
            },
        })?;
        // A file with several identities (a Keychain export of a development and a production push certificate)
        // has no right one to pick: p12-keystore's first-by-alias choice would be arbitrary.
        let key_chains: Vec<(&String, &p12_keystore::PrivateKeyChain)> = store
            .entries()
            .filter_map(|(alias, entry)| match entry {
                p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) => Some((alias, chain)),
                _ => None,
            })
            .collect();
        let key_chain = match key_chains.as_slice() {
            [] => return Err(IdentityError::Pkcs12NoKey { path: name.into() }),
            [(_, chain)] => *chain,
            several => {
                return Err(IdentityError::Pkcs12SeveralKeys {
                    path: name.into(),
                    identities: several
                        .iter()
                        .map(|(alias, chain)| {
                            let subject = chain.certs().first().map_or("none", |c| c.subject());
                            ((*alias).clone(), subject.to_owned())
                        })
                        .collect(),
                });
            }
        };
        let chain: Vec<CertificateDer<'static>> = key_chain
            .certs()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect();
        if chain.is_empty() {
            return Err(IdentityError::Pkcs12NoKey { path: name.into() });
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_chain.key().as_der().to_vec()));
        let mut identity = ClientIdentity { chain, key };
        identity.check_key_matches(name)?;
        identity.check_version()?;
        Ok(identity)
    }

    /// The end-entity certificate (first in the chain). The loaders never produce an empty chain; for one
    /// built by hand with no certificate this is an empty DER that fails to parse.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        static EMPTY: CertificateDer<'static> = CertificateDer::from_slice(&[]);
        self.chain.first().unwrap_or(&EMPTY)
    }

    /// What the leaf certificate says.
    pub fn info(&self) -> Result<CertificateInfo, IdentityError> {
        CertificateInfo::from_der(self.leaf())
    }

    /// Everything `herald check` wants of a push certificate: parseable, valid at `now`, naming a topic.
    pub fn check(&self, now: SystemTime) -> Result<CertificateInfo, IdentityError> {
        let info = self.info()?;
        info.check_validity(now)?;
        info.default_topic()?;
        Ok(info)
    }

    /// Makes sure the leaf is an X.509 version 3 certificate: the TLS stack refuses older ones as client
    /// certificates, so such an identity would fail every connection (and `herald check` must say so first).
    fn check_version(&self) -> Result<(), IdentityError> {
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(self.leaf()).map_err(|e| {
                IdentityError::BadCertificate {
                    detail: e.to_string(),
                }
            })?;
        let version = cert.version().0 + 1;
        if version != 3 {
            return Err(IdentityError::NotVersion3 { version });
        }
        Ok(())
    }

    /// Makes sure the private key belongs to the leaf. When the file lists the chain in another order, the
    /// certificate that matches the key is moved to the front.
    fn check_key_matches(&mut self, name: &str) -> Result<(), IdentityError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| IdentityError::UnsupportedKey {
                detail: e.to_string(),
            })?;
        let Some(key_spki) = signing_key.public_key() else {
            tracing::debug!(
                "{name}: cannot derive the public key of this key type; key/certificate match not checked"
            );
            return Ok(());
        };
        let (_, key_pub) = SubjectPublicKeyInfo::from_der(key_spki.as_ref()).map_err(|e| {
            IdentityError::UnsupportedKey {
                detail: e.to_string(),
            }
        })?;
        for i in 0..self.chain.len() {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&self.chain[i])
                .map_err(|e| IdentityError::BadCertificate {
                    detail: e.to_string(),
                })?;
            let cert_pub = cert.public_key();
            if cert_pub.algorithm.algorithm == key_pub.algorithm.algorithm
                && cert_pub.subject_public_key.data == key_pub.subject_public_key.data
            {
                if i > 0 {
                    let leaf = self.chain.remove(i);
                    self.chain.insert(0, leaf);
                }
                return Ok(());
            }
        }
        Err(IdentityError::KeyMismatch { path: name.into() })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests;
