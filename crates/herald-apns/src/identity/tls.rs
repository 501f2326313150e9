//! rustls client configurations for APNs connections, always on the aws-lc-rs crypto provider: client
//! certificate optional, ALPN `h2` optional (docs/apns-protocol.md#http2-endpoints), server roots from the bundled
//! Mozilla set or a CA file (e.g. the simulator's), the server's name checked or not (`tls_verify = host` or `ca`),
//! or, for tests only, no verification.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ClientIdentity, IdentityError};

/// Where server certificates are verified from, and whether the server's name is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The Mozilla root set compiled in from `webpki-roots` (no dependence on the host's CA store, which may
    /// be missing in containers); the chain and the server's name are checked.
    System,
    /// Only the CA certificates in this PEM file; the chain and the server's name are checked.
    CaFile(PathBuf),
    /// The chain only (`tls_verify = ca`): it must lead to a CA of this PEM file, or of the bundled Mozilla set
    /// when `None`, with valid signatures, dates and server-auth usage, but the certificate may name any host
    /// (a route by IP address, or through a proxy).
    ChainOnly(Option<PathBuf>),
    /// DANGEROUS: accept any server certificate. Handshake signatures are still checked, but anyone can
    /// impersonate the server. For tests against a simulator only.
    NoVerify,
}

/// Builds a client configuration: TLS 1.2 and 1.3, the aws-lc-rs provider, `identity` as the client
/// certificate when given, and ALPN `h2` when `alpn_h2`.
pub fn client_config(
    identity: Option<&ClientIdentity>,
    roots: RootSource,
    alpn_h2: bool,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match roots {
        RootSource::System => builder.with_root_certificates(bundled_roots()),
        RootSource::CaFile(path) => builder.with_root_certificates(ca_file_roots(&path)?),
        RootSource::ChainOnly(ca) => {
            let roots = match ca {
                Some(path) => ca_file_roots(&path)?,
                None => bundled_roots(),
            };
            let verifier = ChainOnlyVerification::new(roots, provider.clone())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
        RootSource::NoVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification::new(&provider))),
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| IdentityError::ClientAuthRefused {
                detail: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    if alpn_h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(Arc::new(config))
}

/// The Mozilla root set compiled in from `webpki-roots`.
fn bundled_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    store
}

/// The CA certificates of the PEM file at `path`: at least one, each usable as a root.
fn ca_file_roots(path: &std::path::Path) -> Result<RootCertStore, IdentityError> {
    let name = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| IdentityError::Io {
        path: name.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            path: name.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCaCertificate { path: name });
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert)?;
    }
    Ok(store)
}

/// Checks the server's chain as [`WebPkiServerVerifier`] does (up to a trusted root, signatures, validity dates,
/// server-auth usage) and the handshake signatures, but accepts a certificate for a name other than the one
/// connected to. The name is checked last, once the chain is known good: its refusal is the only one ignored.
#[derive(Debug)]
struct ChainOnlyVerification {
    inner: Arc<WebPkiServerVerifier>,
}

impl ChainOnlyVerification {
    fn new(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
    ) -> Result<ChainOnlyVerification, IdentityError> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| {
                IdentityError::Tls(rustls::Error::General(format!(
                    "cannot build the server certificate verifier: {e}"
                )))
            })?;
        Ok(ChainOnlyVerification { inner })
    }
}

impl ServerCertVerifier for ChainOnlyVerification {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Accepts any server certificate but still checks handshake signatures against it.
#[derive(Debug)]
struct NoServerVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl NoServerVerification {
    fn new(provider: &CryptoProvider) -> NoServerVerification {
        NoServerVerification {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! Real TLS handshakes on 127.0.0.1 against a server whose certificate names another host than the one
    //! connected to (the route is an IP address), from each verification mode.

    use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
    use std::thread;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use rustls::{ClientConnection, ServerConfig, ServerConnection, SupportedProtocolVersion};
    use rustls_pki_types::PrivateKeyDer;

    use super::*;

    /// A CA that can issue server certificates.
    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn new_ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` signed by `ca`, valid from `days.0` to `days.1` days from now.
    fn server_cert(
        ca: &Ca,
        names: &[&str],
        days: (i64, i64),
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        (cert.der().clone(), key)
    }

    const VALID: (i64, i64) = (-1, 30);

    /// A server presenting `cert` and signing the handshake with `key` (which need not match it), speaking only
    /// `version`.
    fn server(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        version: &'static SupportedProtocolVersion,
    ) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let signer = provider.key_provider.load_private_key(key).unwrap();
        let certified = CertifiedKey::new(vec![cert], signer);
        Arc::new(
            ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified))),
        )
    }

    /// One handshake on 127.0.0.1, the client connecting to the IP address: the client's error, if any.
    fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = thread::spawn(move || {
            let (mut tcp, _) = listener.accept().map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut conn = ServerConnection::new(server).map_err(|e| e.to_string())?;
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        });
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let mut conn = ClientConnection::new(client, name).unwrap();
        let result = (|| {
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        drop(tcp);
        let served = accept.join().unwrap();
        if result.is_ok() {
            served.map_err(|e| format!("the server failed: {e}"))?;
        }
        result
    }

    fn ca_file(dir: &tempfile::TempDir, ca: &Ca) -> PathBuf {
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        path
    }

    /// `tls_verify = ca` (docs/configuration.md; Momentum's `ca`, momentum.md §5): a certificate from the
    /// configured CA for another name is accepted, over TLS 1.2 and 1.3; `host` refuses it, naming the name
    /// connected to.
    #[test]
    fn chain_only_accepts_a_certificate_for_another_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("herald test CA");
        let path = ca_file(&dir, &ca);
        let (cert, key) = server_cert(&ca, &["wrong.example"], VALID);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let chain_only =
                client_config(None, RootSource::ChainOnly(Some(path.clone())), true).unwrap();
            handshake(chain_only, server(cert.clone(), key.clone_key(), version))
                .unwrap_or_else(|e| panic!("{version:?}: {e}"));

            let host = client_config(None, RootSource::CaFile(path.clone()), true).unwrap();
            let err = handshake(host, server(cert.clone(), key.clone_key(), version)).unwrap_err();
            assert!(
                err.contains("not valid for name") && err.contains("127.0.0.1"),
                "{version:?}: {err}"
            );
        }
    }

    /// Without the name, everything else is still checked: the issuer, the validity dates, the bundled roots when
    /// no CA file is given, and the handshake signature (over TLS 1.2 and 1.3).
    #[test]
    fn chain_only_still_checks_the_chain_and_the_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("herald test CA");
        let path = ca_file(&dir, &ca);
        let chain_only =
            || client_config(None, RootSource::ChainOnly(Some(path.clone())), true).unwrap();
        let tls13 = &rustls::version::TLS13;

        let other = new_ca("another CA");
        let (cert, key) = server_cert(&other, &["127.0.0.1"], VALID);
        let err =
            handshake(chain_only(), server(cert.clone(), key.clone_key(), tls13)).unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown issuer"),
            "{err}"
        );

        let (cert, key) = server_cert(&ca, &["wrong.example"], (-30, -1));
        let err = handshake(chain_only(), server(cert, key, tls13)).unwrap_err();
        assert!(err.contains("expired"), "{err}");

        let (cert, key) = server_cert(&ca, &["wrong.example"], (1, 30));
        let err = handshake(chain_only(), server(cert, key, tls13)).unwrap_err();
        assert!(
            err.contains("not valid yet") || err.contains("NotValidYet"),
            "{err}"
        );

        let (cert, key) = server_cert(&ca, &["wrong.example"], VALID);
        let bundled = client_config(None, RootSource::ChainOnly(None), true).unwrap();
        let err = handshake(bundled, server(cert.clone(), key, tls13)).unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown issuer"),
            "{err}"
        );

        // The certificate of the CA's server, the handshake signed with another key.
        let (_, stranger) = server_cert(&ca, &["wrong.example"], VALID);
        for version in [&rustls::version::TLS12, tls13] {
            let err = handshake(
                chain_only(),
                server(cert.clone(), stranger.clone_key(), version),
            )
            .unwrap_err();
            assert!(
                err.contains("BadSignature") || err.contains("bad signature"),
                "{version:?}: {err}"
            );
        }
    }

    #[test]
    fn a_chain_only_ca_file_is_read_as_for_host() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(None, RootSource::ChainOnly(Some(missing)), true).unwrap_err();
        assert!(matches!(e, IdentityError::Io { .. }), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(None, RootSource::ChainOnly(Some(empty)), true).unwrap_err();
        assert!(matches!(e, IdentityError::NoCaCertificate { .. }), "{e}");
    }
}
