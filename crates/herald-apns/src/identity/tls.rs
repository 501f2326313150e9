//! rustls client configurations for APNs connections, always on the aws-lc-rs crypto provider: client
//! certificate optional, ALPN `h2` optional (docs/apns-protocol.md#http2-endpoints), server roots from the bundled
//! Mozilla set, a CA file (e.g. the simulator's), or, for tests only, no verification.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ClientIdentity, IdentityError};

/// Where server certificates are verified from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The Mozilla root set compiled in from `webpki-roots` (no dependence on the host's CA store, which may
    /// be missing in containers).
    System,
    /// Only the CA certificates in this PEM file.
    CaFile(PathBuf),
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
        RootSource::System => {
            let mut store = RootCertStore::empty();
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(store)
        }
        RootSource::CaFile(path) => {
            let name = path.display().to_string();
            let pem = std::fs::read(&path).map_err(|source| IdentityError::Io {
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
            builder.with_root_certificates(store)
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
