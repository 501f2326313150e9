//! Test PKI for the simulator: a CA, a server certificate for 127.0.0.1/localhost, APNs-style client certificates
//! per topic (universal, production and sandbox variants, PEM and PKCS#12) and a `.p8` provider-token key, with a
//! `pki.json` manifest naming every file by absolute path.
//!
//! The client certificates carry what Apple's do (docs/apns-protocol.md#certificates): subject `UID=<topic>` and
//! `CN=Apple Push Services: <topic>`, the topics extension `1.2.840.113635.100.6.3.6`, and the environment
//! extensions `…6.3.1` (development/sandbox) and `…6.3.2` (production); a universal certificate has both.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};

use crate::config::Environment;

/// The topic `herald sim pki` uses when none is given.
pub const DEFAULT_TOPIC: &str = "com.example.herald";
/// The password of every PKCS#12 file the PKI writes.
pub const P12_PASSWORD: &str = "herald";
/// OID of the subject UID attribute (userid), which carries the bundle id.
pub const OID_UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];
/// OID of Apple's topics extension.
pub const OID_TOPICS: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 6];
/// OID of Apple's development (sandbox) environment extension.
pub const OID_ENV_SANDBOX: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 1];
/// OID of Apple's production environment extension.
pub const OID_ENV_PRODUCTION: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 2];

/// Errors while generating, writing or loading the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid pki.json manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the PKCS#12 file for {topic}: {message}")]
    Pkcs12 { topic: String, message: String },
    #[error("{path}: no PEM block of type {kind}")]
    Pem { path: PathBuf, kind: &'static str },
    #[error("topic {0:?} is not a usable bundle id (letters, digits, '.', '-', '_' only)")]
    BadTopic(String),
}

/// Which environments a client certificate is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertVariant {
    /// Both environment extensions (Apple's "Sandbox & Production" certificate).
    Universal,
    /// Only the production extension.
    Production,
    /// Only the development (sandbox) extension.
    Sandbox,
}

impl CertVariant {
    pub const ALL: [CertVariant; 3] = [
        CertVariant::Universal,
        CertVariant::Production,
        CertVariant::Sandbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertVariant::Universal => "universal",
            CertVariant::Production => "production",
            CertVariant::Sandbox => "sandbox",
        }
    }

    /// Whether a certificate of this variant may be used against a server of `env`.
    pub fn allows(self, env: Environment) -> bool {
        matches!(
            (self, env),
            (CertVariant::Universal, _)
                | (CertVariant::Production, Environment::Production)
                | (CertVariant::Sandbox, Environment::Sandbox)
        )
    }
}

/// One client identity on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFiles {
    /// Certificate (PEM), leaf only.
    pub cert: PathBuf,
    /// Private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Certificate, key and CA in one PKCS#12 file, password [`P12_PASSWORD`].
    pub p12: PathBuf,
}

/// The provider-token signing key on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKeyFiles {
    /// `AuthKey_<KEYID>.p8`: PKCS#8 PEM, P-256.
    pub p8: PathBuf,
    pub key_id: String,
    pub team_id: String,
}

/// `pki.json`: every file of a generated PKI by absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkiManifest {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub p12_password: String,
    /// topic -> variant (`universal`, `production`, `sandbox`) -> files.
    pub clients: BTreeMap<String, BTreeMap<String, ClientFiles>>,
    pub token_key: TokenKeyFiles,
    /// Copies of `token_key.key_id` / `token_key.team_id` at top level for scripts.
    pub key_id: String,
    pub team_id: String,
}

/// A generated test PKI, in memory and on disk. Keeps the CA so tests can issue more client certificates.
pub struct Pki {
    pub manifest: PkiManifest,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// What a client certificate should contain; [`Pki::issue_client`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertSpec {
    /// Subject UID (the bundle id). `None` makes a certificate APNs would not accept (BadCertificate).
    pub uid: Option<String>,
    /// Topics for the `…6.3.6` extension; empty = no extension.
    pub topics: Vec<String>,
    pub variant: CertVariant,
}

impl ClientCertSpec {
    /// The standard certificate for `topic`: the topic, its `.voip` and `.complication` topics in the extension.
    pub fn for_topic(topic: &str, variant: CertVariant) -> Self {
        ClientCertSpec {
            uid: Some(topic.to_owned()),
            topics: vec![
                topic.to_owned(),
                format!("{topic}.voip"),
                format!("{topic}.complication"),
            ],
            variant,
        }
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_owned(),
        source,
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    fs::write(path, data).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes a private key (or a file holding one) readable by its owner only (0600 on Unix), made so before the key
/// is written: a test PKI's keys are still keys.
fn write_secret(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut file = options.open(path)?;
        // A file that existed keeps its mode at open: narrow it too.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(data)
    };
    write().map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 200
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// DER length prefix.
fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn der_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    der_len(out, content.len());
    out.extend_from_slice(content);
}

/// The topics extension value: SEQUENCE of alternating UTF8String topic and SEQUENCE { UTF8String kind }.
pub fn encode_topics_extension(topics: &[String]) -> Vec<u8> {
    let mut items = Vec::new();
    let base = topics.first().map(String::as_str).unwrap_or_default();
    for topic in topics {
        der_tlv(&mut items, 0x0c, topic.as_bytes());
        let kind = match topic.strip_prefix(base) {
            Some("") => "app",
            Some(".voip") => "voip",
            Some(".complication") => "complication",
            _ => "app",
        };
        let mut kind_der = Vec::new();
        der_tlv(&mut kind_der, 0x0c, kind.as_bytes());
        der_tlv(&mut items, 0x30, &kind_der);
    }
    let mut out = Vec::new();
    der_tlv(&mut out, 0x30, &items);
    out
}

fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
        }
    }
    out
}

fn abs_dir(dir: &Path) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })?;
    fs::canonicalize(dir).map_err(|source| PkiError::Read {
        path: dir.to_owned(),
        source,
    })
}

impl Pki {
    /// Generates a new PKI into `dir` (created if missing) for `topics` (default [`DEFAULT_TOPIC`]) and writes
    /// `dir/pki.json`.
    pub fn generate(dir: &Path, topics: &[String]) -> Result<Pki, PkiError> {
        let dir = abs_dir(dir)?;
        let topics: Vec<String> = if topics.is_empty() {
            vec![DEFAULT_TOPIC.to_owned()]
        } else {
            topics.to_vec()
        };
        if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
            return Err(PkiError::BadTopic(bad.clone()));
        }

        let ca_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("the CA key"))?;
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "herald APNs simulator test CA");
        dn.push(DnType::OrganizationName, "herald");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut ca_params);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(gen_err("the CA certificate"))?;

        let ca_cert_path = dir.join("ca.pem");
        let ca_key_path = dir.join("ca-key.pem");
        write_file(&ca_cert_path, ca_cert.pem().as_bytes())?;
        write_secret(&ca_key_path, ca_key.serialize_pem().as_bytes())?;

        let mut pki = Pki {
            manifest: PkiManifest {
                dir: dir.clone(),
                ca_cert: ca_cert_path,
                ca_key: ca_key_path,
                server_cert: dir.join("server.pem"),
                server_key: dir.join("server-key.pem"),
                p12_password: P12_PASSWORD.to_owned(),
                clients: BTreeMap::new(),
                token_key: TokenKeyFiles {
                    p8: PathBuf::new(),
                    key_id: String::new(),
                    team_id: String::new(),
                },
                key_id: String::new(),
                team_id: String::new(),
            },
            ca_params,
            ca_key,
        };

        // Server certificate.
        let server_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("the server key"))?;
        let mut server_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .map_err(gen_err("the server certificate"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        server_params.distinguished_name = dn;
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut server_params);
        let server_cert = server_params
            .signed_by(&server_key, &pki.issuer())
            .map_err(gen_err("the server certificate"))?;
        write_file(&pki.manifest.server_cert, server_cert.pem().as_bytes())?;
        write_secret(
            &pki.manifest.server_key,
            server_key.serialize_pem().as_bytes(),
        )?;

        // Client certificates.
        let clients_dir = dir.join("clients");
        fs::create_dir_all(&clients_dir).map_err(|source| PkiError::Write {
            path: clients_dir.clone(),
            source,
        })?;
        for topic in &topics {
            let mut variants = BTreeMap::new();
            for variant in CertVariant::ALL {
                let name = format!("{topic}-{}", variant.as_str());
                let files = pki.issue_client(&ClientCertSpec::for_topic(topic, variant), &name)?;
                variants.insert(variant.as_str().to_owned(), files);
            }
            pki.manifest.clients.insert(topic.clone(), variants);
        }

        // Provider-token key.
        let key_id = random_id(10);
        let team_id = random_id(10);
        let p8 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("the .p8 key"))?;
        let p8_path = dir.join(format!("AuthKey_{key_id}.p8"));
        write_secret(&p8_path, p8.serialize_pem().as_bytes())?;
        pki.manifest.token_key = TokenKeyFiles {
            p8: p8_path,
            key_id: key_id.clone(),
            team_id: team_id.clone(),
        };
        pki.manifest.key_id = key_id;
        pki.manifest.team_id = team_id;

        let manifest_path = dir.join("pki.json");
        let json =
            serde_json::to_vec_pretty(&pki.manifest).map_err(|source| PkiError::Manifest {
                path: manifest_path.clone(),
                source,
            })?;
        write_file(&manifest_path, &json)?;
        Ok(pki)
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// Issues a client certificate signed by this PKI's CA and writes `clients/<name>.pem`, `-key.pem` and `.p12`.
    pub fn issue_client(&self, spec: &ClientCertSpec, name: &str) -> Result<ClientFiles, PkiError> {
        let what = format!("the client certificate {name}");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err(&what))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        match &spec.uid {
            Some(uid) => {
                dn.push(DnType::CustomDnType(OID_UID.to_vec()), uid.as_str());
                dn.push(DnType::CommonName, format!("Apple Push Services: {uid}"));
            }
            None => dn.push(DnType::CommonName, format!("herald test client {name}")),
        }
        dn.push(DnType::OrganizationalUnitName, "HERALDTEAM");
        dn.push(DnType::OrganizationName, "herald test");
        dn.push(DnType::CountryName, "US");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !spec.topics.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_TOPICS,
                    encode_topics_extension(&spec.topics),
                ));
        }
        let null = vec![0x05, 0x00];
        if matches!(spec.variant, CertVariant::Universal | CertVariant::Sandbox) {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_ENV_SANDBOX,
                    null.clone(),
                ));
        }
        if matches!(
            spec.variant,
            CertVariant::Universal | CertVariant::Production
        ) {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(OID_ENV_PRODUCTION, null));
        }
        validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer())
            .map_err(gen_err(&what))?;

        let dir = self.manifest.dir.join("clients");
        fs::create_dir_all(&dir).map_err(|source| PkiError::Write {
            path: dir.clone(),
            source,
        })?;
        let files = ClientFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            p12: dir.join(format!("{name}.p12")),
        };
        write_file(&files.cert, cert.pem().as_bytes())?;
        write_secret(&files.key, key.serialize_pem().as_bytes())?;

        let p12 = self.pkcs12(name, cert.der(), key.serialized_der())?;
        write_secret(&files.p12, &p12)?;
        Ok(files)
    }

    fn pkcs12(&self, name: &str, cert_der: &[u8], key_der: &[u8]) -> Result<Vec<u8>, PkiError> {
        let p12_err = |e: p12_keystore::error::Error| PkiError::Pkcs12 {
            topic: name.to_owned(),
            message: e.to_string(),
        };
        let ca_der = self.ca_der()?;
        let leaf = p12_keystore::Certificate::from_der(cert_der).map_err(p12_err)?;
        let ca = p12_keystore::Certificate::from_der(&ca_der).map_err(p12_err)?;
        let key = p12_keystore::PrivateKey::from_der(key_der).map_err(p12_err)?;
        let chain = p12_keystore::PrivateKeyChain::new(name.as_bytes().to_vec(), key, [leaf, ca]);
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(name, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        // 2048 iterations: OpenSSL's default for PKCS#12, and quick enough for a test PKI.
        store
            .writer(P12_PASSWORD)
            .encryption_iterations(2048)
            .mac_iterations(2048)
            .write()
            .map_err(p12_err)
    }

    fn ca_der(&self) -> Result<Vec<u8>, PkiError> {
        let pem = fs::read(&self.manifest.ca_cert).map_err(|source| PkiError::Read {
            path: self.manifest.ca_cert.clone(),
            source,
        })?;
        first_pem_der(&pem, "CERTIFICATE").ok_or(PkiError::Pem {
            path: self.manifest.ca_cert.clone(),
            kind: "CERTIFICATE",
        })
    }

    /// Reads `dir/pki.json` (as written by [`Pki::generate`]).
    pub fn load_manifest(dir: &Path) -> Result<PkiManifest, PkiError> {
        let path = dir.join("pki.json");
        let bytes = fs::read(&path).map_err(|source| PkiError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| PkiError::Manifest { path, source })
    }

    /// The client files for `topic` and `variant`, if the manifest has them.
    pub fn client(&self, topic: &str, variant: CertVariant) -> Option<&ClientFiles> {
        self.manifest.clients.get(topic)?.get(variant.as_str())
    }
}

/// Decodes the first PEM block of type `kind`.
pub(crate) fn first_pem_der(pem: &[u8], kind: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_extension_is_a_sequence_of_topic_and_kind() {
        let der = encode_topics_extension(&["a.b".into(), "a.b.voip".into()]);
        // SEQUENCE { UTF8 "a.b", SEQ { UTF8 "app" }, UTF8 "a.b.voip", SEQ { UTF8 "voip" } }
        let expected = [
            0x30, 0x1e, 0x0c, 0x03, b'a', b'.', b'b', 0x30, 0x05, 0x0c, 0x03, b'a', b'p', b'p',
            0x0c, 0x08, b'a', b'.', b'b', b'.', b'v', b'o', b'i', b'p', 0x30, 0x06, 0x0c, 0x04,
            b'v', b'o', b'i', b'p',
        ];
        assert_eq!(der, expected);
    }

    #[test]
    fn random_ids_have_the_apple_shape() {
        let id = random_id(10);
        assert_eq!(id.len(), 10);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }

    /// The keys of a generated PKI (CA, server, .p8, each client's key and PKCS#12 file) are readable by their
    /// owner only; certificates and the manifest stay readable; a key file that existed is narrowed too.
    #[cfg(unix)]
    #[test]
    fn keys_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let ca_key = dir.path().join("ca-key.pem");
        fs::write(&ca_key, b"old").unwrap();
        fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o644)).unwrap();
        let pki = Pki::generate(dir.path(), &["com.example.app".to_owned()]).unwrap();
        let m = &pki.manifest;
        let client = pki
            .client("com.example.app", CertVariant::Universal)
            .unwrap();
        for key in [
            &ca_key,
            &m.server_key,
            &m.token_key.p8,
            &client.key,
            &client.p12,
        ] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        assert_eq!(
            mode(&m.ca_cert) & 0o044,
            0o044,
            "certificates stay readable"
        );
    }

    #[test]
    fn variants_gate_environments() {
        assert!(CertVariant::Universal.allows(Environment::Sandbox));
        assert!(CertVariant::Production.allows(Environment::Production));
        assert!(!CertVariant::Production.allows(Environment::Sandbox));
        assert!(!CertVariant::Sandbox.allows(Environment::Production));
    }

    #[test]
    fn generate_writes_every_file_of_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &["com.example.one".into()]).unwrap();
        let m = Pki::load_manifest(dir.path()).unwrap();
        assert_eq!(m, pki.manifest);
        for p in [
            &m.ca_cert,
            &m.ca_key,
            &m.server_cert,
            &m.server_key,
            &m.token_key.p8,
        ] {
            assert!(p.is_absolute() && p.exists(), "{}", p.display());
        }
        let files = pki.client("com.example.one", CertVariant::Sandbox).unwrap();
        assert!(files.cert.exists() && files.key.exists() && files.p12.exists());
        let p12 = fs::read(&files.p12).unwrap();
        let store =
            p12_keystore::KeyStore::from_pkcs12(&p12, P12_PASSWORD, Default::default()).unwrap();
        assert!(store.private_key_chain().is_some());
        assert!(Pki::generate(dir.path(), &["bad topic".into()]).is_err());
    }
}
