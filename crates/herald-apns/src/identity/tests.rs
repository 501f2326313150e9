//! Tests of identity loading and certificate facts, with certificates made by rcgen and PKCS#12 files made
//! by the `openssl` command and by p12-keystore.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};

use super::cert_info::tests::topics_extension;
use super::*;

const UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];
const TOPICS: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 6];
const DEV: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 1];
const PROD: &[u64] = &[1, 2, 840, 113635, 100, 6, 3, 2];

/// Options for a test push certificate.
pub(crate) struct CertSpec<'a> {
    pub uid: Option<&'a str>,
    pub topics: &'a [(&'a str, &'a str)],
    pub dev: bool,
    pub prod: bool,
    pub not_before: (i32, u8, u8),
    pub not_after: (i32, u8, u8),
}

impl Default for CertSpec<'_> {
    fn default() -> Self {
        CertSpec {
            uid: Some("com.example.app"),
            topics: &[],
            dev: false,
            prod: false,
            not_before: (2000, 1, 1),
            not_after: (2099, 1, 1),
        }
    }
}

/// A self-signed certificate and its key, both PEM.
pub(crate) fn push_cert(spec: &CertSpec<'_>) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    if let Some(uid) = spec.uid {
        dn.push(DnType::CustomDnType(UID.to_vec()), uid);
        dn.push(DnType::CommonName, format!("Apple Push Services: {uid}"));
    } else {
        dn.push(DnType::CommonName, "no uid here");
    }
    params.distinguished_name = dn;
    if !spec.topics.is_empty() {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                TOPICS,
                topics_extension(spec.topics),
            ));
    }
    if spec.dev {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(DEV, vec![5, 0]));
    }
    if spec.prod {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(PROD, vec![5, 0]));
    }
    let (y, m, d) = spec.not_before;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = spec.not_after;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs the `openssl` command; a missing command fails the test with instructions.
fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("these tests need the `openssl` command (install OpenSSL, e.g. `apt-get install openssl`): {e}")
    })
}

fn openssl_ok(args: &[&str]) {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pem_cert_and_separate_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = push_cert(&CertSpec {
        topics: &[
            ("com.example.app", "app"),
            ("com.example.app.voip", "voip"),
            ("com.example.app.complication", "complication"),
        ],
        dev: true,
        ..CertSpec::default()
    });
    let c = write(dir.path(), "cert.pem", &cert);
    let k = write(dir.path(), "key.pem", &key);
    let id = ClientIdentity::from_pem_files(&c, Some(&k)).unwrap();
    assert_eq!(id.chain.len(), 1);
    let info = id.info().unwrap();
    assert_eq!(info.uid.as_deref(), Some("com.example.app"));
    assert_eq!(
        info.topics,
        vec![
            "com.example.app",
            "com.example.app.voip",
            "com.example.app.complication"
        ]
    );
    assert_eq!(info.environment, CertEnvironment::Development);
    assert!(
        info.subject
            .contains("Apple Push Services: com.example.app"),
        "{}",
        info.subject
    );
    assert!(info.allows_topic("com.example.app.voip"));
    assert!(!info.allows_topic("com.other.app"));
    assert_eq!(id.check(SystemTime::now()).unwrap(), info);
    assert_eq!(format_utc(info.not_after), "2099-01-01 00:00:00 UTC");
    assert!(!format!("{id:?}").contains("PRIVATE"));
}

#[test]
fn key_inside_the_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = push_cert(&CertSpec {
        prod: true,
        ..CertSpec::default()
    });
    let both = write(dir.path(), "both.pem", format!("{key}{cert}"));
    let id = ClientIdentity::from_pem_files(&both, None).unwrap();
    let info = id.info().unwrap();
    assert_eq!(info.environment, CertEnvironment::Production);
    assert!(info.topics.is_empty());
    assert_eq!(info.default_topic().unwrap(), "com.example.app");
}

#[test]
fn environment_markers() {
    // docs/apns-protocol.md#certificates: …6.3.1 development, …6.3.2 production, both or neither universal.
    for (dev, prod, want) in [
        (true, false, CertEnvironment::Development),
        (false, true, CertEnvironment::Production),
        (true, true, CertEnvironment::Universal),
        (false, false, CertEnvironment::Universal),
    ] {
        let (cert, key) = push_cert(&CertSpec {
            dev,
            prod,
            ..CertSpec::default()
        });
        let id = ClientIdentity::from_pem(cert.as_bytes(), "cert", Some((key.as_bytes(), "key")))
            .unwrap();
        assert_eq!(id.info().unwrap().environment, want);
    }
}

#[test]
fn mismatched_key_is_refused() {
    let (cert, _) = push_cert(&CertSpec::default());
    let (_, other_key) = push_cert(&CertSpec::default());
    let e = ClientIdentity::from_pem(
        cert.as_bytes(),
        "cert.pem",
        Some((other_key.as_bytes(), "key.pem")),
    )
    .unwrap_err();
    assert!(
        matches!(&e, IdentityError::KeyMismatch { path } if path == "key.pem"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "key.pem: the private key does not match the certificate's public key"
    );
}

#[test]
fn expired_and_not_yet_valid() {
    let (cert, key) = push_cert(&CertSpec {
        not_before: (2010, 1, 1),
        not_after: (2020, 1, 1),
        ..CertSpec::default()
    });
    let id = ClientIdentity::from_pem(cert.as_bytes(), "c", Some((key.as_bytes(), "k"))).unwrap();
    let e = id.check(SystemTime::now()).unwrap_err();
    assert!(matches!(e, IdentityError::Expired { .. }), "{e}");
    assert!(
        e.to_string().contains("expired at 2020-01-01 00:00:00 UTC"),
        "{e}"
    );
    let (cert, key) = push_cert(&CertSpec {
        not_before: (2090, 1, 1),
        not_after: (2095, 1, 1),
        ..CertSpec::default()
    });
    let id = ClientIdentity::from_pem(cert.as_bytes(), "c", Some((key.as_bytes(), "k"))).unwrap();
    let e = id.check(SystemTime::now()).unwrap_err();
    assert!(matches!(e, IdentityError::NotYetValid { .. }), "{e}");
    // Within the window it passes.
    let info = id.info().unwrap();
    assert!(
        info.check_validity(info.not_before + Duration::from_secs(1))
            .is_ok()
    );
}

#[test]
fn certificate_without_topic() {
    let (cert, key) = push_cert(&CertSpec {
        uid: None,
        ..CertSpec::default()
    });
    let id = ClientIdentity::from_pem(cert.as_bytes(), "c", Some((key.as_bytes(), "k"))).unwrap();
    let e = id.check(SystemTime::now()).unwrap_err();
    assert!(matches!(e, IdentityError::NoTopic { .. }), "{e}");
    // A topics extension alone is enough.
    let (cert, key) = push_cert(&CertSpec {
        uid: None,
        topics: &[("com.example.t", "app")],
        ..CertSpec::default()
    });
    let id = ClientIdentity::from_pem(cert.as_bytes(), "c", Some((key.as_bytes(), "k"))).unwrap();
    assert_eq!(
        id.check(SystemTime::now())
            .unwrap()
            .default_topic()
            .unwrap(),
        "com.example.t"
    );
}

#[test]
fn a_hand_built_identity_without_certificates_does_not_panic() {
    let (_, key) = push_cert(&CertSpec::default());
    let id = ClientIdentity {
        chain: vec![],
        key: PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    };
    assert!(id.leaf().is_empty());
    assert!(matches!(
        id.info(),
        Err(IdentityError::BadCertificate { .. })
    ));
}

#[test]
fn loading_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = ClientIdentity::from_pem_files(&missing, None).unwrap_err();
    assert!(
        matches!(e, IdentityError::Io { .. }) && e.to_string().contains("missing.pem"),
        "{e}"
    );
    let (cert, key) = push_cert(&CertSpec::default());
    let only_key = write(dir.path(), "only-key.pem", &key);
    let e = ClientIdentity::from_pem_files(&only_key, None).unwrap_err();
    assert!(matches!(e, IdentityError::NoCertificate { .. }), "{e}");
    let only_cert = write(dir.path(), "only-cert.pem", &cert);
    let e = ClientIdentity::from_pem_files(&only_cert, None).unwrap_err();
    assert!(
        matches!(&e, IdentityError::NoPrivateKey { path } if path.ends_with("only-cert.pem")),
        "{e}"
    );
    let enc = write(
        dir.path(),
        "enc.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let e = ClientIdentity::from_pem_files(&only_cert, Some(&enc)).unwrap_err();
    assert!(matches!(e, IdentityError::EncryptedKey { .. }), "{e}");
}

/// Writes cert+key PEM files and returns their paths.
fn pem_files(dir: &Path, spec: &CertSpec<'_>) -> (PathBuf, PathBuf) {
    let (cert, key) = push_cert(spec);
    (write(dir, "c.pem", cert), write(dir, "k.pem", key))
}

fn export_p12(
    dir: &Path,
    cert: &Path,
    key: &Path,
    name: &str,
    password: &str,
    extra: &[&str],
) -> PathBuf {
    let out = dir.join(name);
    let pass = format!("pass:{password}");
    let mut args = vec![
        "pkcs12",
        "-export",
        "-in",
        cert.to_str().unwrap(),
        "-inkey",
        key.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
        "-passout",
        &pass,
    ];
    args.extend_from_slice(extra);
    openssl_ok(&args);
    out
}

#[test]
fn pkcs12_from_openssl_default_aes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = pem_files(
        dir.path(),
        &CertSpec {
            topics: &[("com.example.app", "app")],
            ..CertSpec::default()
        },
    );
    let p12 = export_p12(dir.path(), &c, &k, "aes.p12", "s3cret", &[]);
    let id = ClientIdentity::from_pkcs12(&p12, "s3cret").unwrap();
    let info = id.info().unwrap();
    assert_eq!(info.uid.as_deref(), Some("com.example.app"));
    assert_eq!(info.topics, vec!["com.example.app"]);
    let e = ClientIdentity::from_pkcs12(&p12, "wrong").unwrap_err();
    assert!(
        matches!(&e, IdentityError::WrongPassword { path } if path.ends_with("aes.p12")),
        "{e}"
    );
}

#[test]
fn pkcs12_from_openssl_legacy_rc2_3des() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = pem_files(dir.path(), &CertSpec::default());
    // `-legacy` gives RC2-40 for the certificates and 3DES for the key; it needs OpenSSL's legacy provider.
    let probe = openssl(&["list", "-providers", "-provider", "legacy"]);
    let p12 = if probe.status.success() {
        export_p12(dir.path(), &c, &k, "legacy.p12", "pw", &["-legacy"])
    } else {
        eprintln!("OpenSSL's legacy provider is not installed: testing 3DES only, not RC2");
        export_p12(
            dir.path(),
            &c,
            &k,
            "legacy.p12",
            "pw",
            &[
                "-certpbe",
                "PBE-SHA1-3DES",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
        )
    };
    let id = ClientIdentity::from_pkcs12(&p12, "pw").unwrap();
    assert_eq!(id.info().unwrap().uid.as_deref(), Some("com.example.app"));
    assert!(matches!(
        ClientIdentity::from_pkcs12(&p12, "nope"),
        Err(IdentityError::WrongPassword { .. })
    ));
    // The explicit 3DES form, which needs no legacy provider.
    let p12 = export_p12(
        dir.path(),
        &c,
        &k,
        "3des.p12",
        "pw",
        &[
            "-certpbe",
            "PBE-SHA1-3DES",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    );
    assert!(ClientIdentity::from_pkcs12(&p12, "pw").is_ok());
}

#[test]
fn pkcs12_with_empty_password() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = pem_files(dir.path(), &CertSpec::default());
    let p12 = export_p12(dir.path(), &c, &k, "empty.p12", "", &[]);
    let id = ClientIdentity::from_pkcs12(&p12, "").unwrap();
    assert_eq!(id.info().unwrap().uid.as_deref(), Some("com.example.app"));
}

#[test]
fn pkcs12_with_rsa_key_and_chain() {
    // APNs certificates are RSA and come with Apple's intermediate: build both with openssl.
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
        "-subj",
        "/CN=Test WWDR CA",
        "-days",
        "2",
    ]);
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("leaf.key"),
        "-out",
        &d("leaf.csr"),
        "-subj",
        "/UID=com.example.rsa/CN=Apple Push Services: com.example.rsa",
    ]);
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &d("leaf.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("leaf-v1.pem"),
        "-days",
        "2",
    ]);
    // Without extensions openssl writes an X.509 version 1 certificate, which TLS refuses as a client certificate:
    // it is refused at load, with the fix in the message.
    let e = ClientIdentity::from_pem_files(
        Path::new(&d("leaf-v1.pem")),
        Some(Path::new(&d("leaf.key"))),
    )
    .unwrap_err();
    assert!(
        matches!(e, IdentityError::NotVersion3 { version: 1 }),
        "{e}"
    );
    assert!(e.to_string().contains("-extfile"), "{e}");
    let ext = write(dir.path(), "v3.ext", "basicConstraints = CA:FALSE\n");
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &d("leaf.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        &d("leaf.pem"),
        "-days",
        "2",
    ]);
    let p12 = export_p12(
        dir.path(),
        Path::new(&d("leaf.pem")),
        Path::new(&d("leaf.key")),
        "rsa.p12",
        "pw",
        &["-certfile", &d("ca.pem")],
    );
    let id = ClientIdentity::from_pkcs12(&p12, "pw").unwrap();
    assert_eq!(id.chain.len(), 2, "leaf and intermediate");
    let info = id.check(SystemTime::now()).unwrap();
    assert_eq!(info.uid.as_deref(), Some("com.example.rsa"));
    // The RSA key against the wrong certificate.
    let e =
        ClientIdentity::from_pem_files(Path::new(&d("ca.pem")), Some(Path::new(&d("leaf.key"))))
            .unwrap_err();
    assert!(matches!(e, IdentityError::KeyMismatch { .. }), "{e}");
    // PEM with the chain in one file.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(d("leaf.pem")).unwrap(),
        std::fs::read_to_string(d("ca.pem")).unwrap()
    );
    let chain_path = write(dir.path(), "chain.pem", chain);
    let id = ClientIdentity::from_pem_files(&chain_path, Some(Path::new(&d("leaf.key")))).unwrap();
    assert_eq!(id.chain.len(), 2);
    // The same chain listed CA first: the leaf is found by its key and put first.
    let reversed = format!(
        "{}{}",
        std::fs::read_to_string(d("ca.pem")).unwrap(),
        std::fs::read_to_string(d("leaf.pem")).unwrap()
    );
    let reversed_path = write(dir.path(), "reversed.pem", reversed);
    let id2 =
        ClientIdentity::from_pem_files(&reversed_path, Some(Path::new(&d("leaf.key")))).unwrap();
    assert_eq!(id2.leaf().as_ref(), id.leaf().as_ref());
    assert_eq!(id2.info().unwrap().uid.as_deref(), Some("com.example.rsa"));
}

#[test]
fn pkcs12_written_by_p12_keystore() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let (cert_pem, key_pem) = push_cert(&CertSpec {
        uid: Some("com.example.ks"),
        ..CertSpec::default()
    });
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let chain = PrivateKeyChain::new(
        b"key-1".to_vec(),
        PrivateKey::from_der(key_der.secret_der()).unwrap(),
        vec![Certificate::from_der(&cert_der).unwrap()],
    );
    let mut store = KeyStore::new();
    store.add_entry("push", KeyStoreEntry::PrivateKeyChain(chain));
    for password in ["pw", ""] {
        let der = store.writer(password).write().unwrap();
        let id = ClientIdentity::from_pkcs12_der(&der, password, "memory.p12").unwrap();
        assert_eq!(id.info().unwrap().uid.as_deref(), Some("com.example.ks"));
        assert_eq!(id.leaf().as_ref(), cert_der.as_ref());
    }
    let der = store.writer("pw").write().unwrap();
    assert!(matches!(
        ClientIdentity::from_pkcs12_der(&der, "bad", "m"),
        Err(IdentityError::WrongPassword { .. })
    ));
    // A store with only a certificate has no identity in it.
    let mut certs_only = KeyStore::new();
    certs_only.add_entry(
        "ca",
        KeyStoreEntry::Certificate(Certificate::from_der(&cert_der).unwrap()),
    );
    let der = certs_only.writer("pw").write().unwrap();
    assert!(matches!(
        ClientIdentity::from_pkcs12_der(&der, "pw", "m"),
        Err(IdentityError::Pkcs12NoKey { .. })
    ));
    assert!(matches!(
        ClientIdentity::from_pkcs12_der(b"not a p12", "pw", "m"),
        Err(IdentityError::Pkcs12 { .. })
    ));
}

/// docs/apns-protocol.md#certificates: a development and a production certificate of one app, exported together
/// from a Keychain, make a PKCS#12 file with two identities. Loading one of them would pick by alias, and every
/// push could then fail with `BadCertificateEnvironment`: the file is refused, naming it and what it holds.
#[test]
fn pkcs12_with_two_identities_is_refused_naming_each() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let mut store = KeyStore::new();
    for (alias, key_id, dev, prod) in [
        (
            "Apple Development IOS Push Services: com.example.two",
            b"dev",
            true,
            false,
        ),
        ("Apple Push Services: com.example.two", b"prd", false, true),
    ] {
        let (cert_pem, key_pem) = push_cert(&CertSpec {
            uid: Some("com.example.two"),
            dev,
            prod,
            ..CertSpec::default()
        });
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let chain = PrivateKeyChain::new(
            key_id.to_vec(),
            PrivateKey::from_der(key_der.secret_der()).unwrap(),
            vec![Certificate::from_der(&cert_der).unwrap()],
        );
        store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(chain));
    }
    let dir = tempfile::tempdir().unwrap();
    let p12 = write(dir.path(), "both.p12", store.writer("pw").write().unwrap());
    let e = ClientIdentity::from_pkcs12(&p12, "pw").unwrap_err();
    let IdentityError::Pkcs12SeveralKeys { path, identities } = &e else {
        panic!("{e}");
    };
    assert_eq!(path, &p12.display().to_string());
    let aliases: Vec<&str> = identities.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        aliases,
        [
            "Apple Development IOS Push Services: com.example.two",
            "Apple Push Services: com.example.two",
        ]
    );
    assert!(
        identities
            .iter()
            .all(|(_, subject)| subject.contains("com.example.two")),
        "{identities:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: the PKCS#12 file holds 2 identities",
            p12.display()
        )) && text.contains("\"Apple Push Services: com.example.two\" (subject ")
            && text.contains("export only the push certificate"),
        "{text}"
    );
}

#[test]
fn client_configs() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = push_cert(&CertSpec::default());
    let id = ClientIdentity::from_pem(cert.as_bytes(), "c", Some((key.as_bytes(), "k"))).unwrap();
    let ca = write(dir.path(), "ca.pem", &cert);
    let cfg = client_config(Some(&id), RootSource::CaFile(ca), true).unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(cfg.client_auth_cert_resolver.has_certs());
    let cfg = client_config(None, RootSource::System, false).unwrap();
    assert!(cfg.alpn_protocols.is_empty());
    assert!(!cfg.client_auth_cert_resolver.has_certs());
    assert!(client_config(Some(&id), RootSource::NoVerify, true).is_ok());
    let e = client_config(None, RootSource::CaFile(dir.path().join("nope.pem")), true).unwrap_err();
    assert!(matches!(e, IdentityError::Io { .. }), "{e}");
    let empty = write(dir.path(), "empty.pem", "");
    let e = client_config(None, RootSource::CaFile(empty), true).unwrap_err();
    assert!(matches!(e, IdentityError::NoCaCertificate { .. }), "{e}");
}
