//! rustls server configurations (aws-lc-rs provider): the HTTP/2 port (ALPN `h2`, prior knowledge without ALPN
//! also accepted, client certificate optional) and the binary/feedback ports (client certificate required).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsMaterial;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the client CA certificate is unusable: {0}")]
    ClientCa(rustls::Error),
    #[error("cannot build the client-certificate verifier: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
    #[error("the server certificate or key is unusable: {0}")]
    ServerCert(rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `client_cert_required`: binary and feedback (true) or HTTP/2 (false: token connections present none).
pub fn server_config(
    tls: &TlsMaterial,
    client_cert_required: bool,
    alpn_h2: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in &tls.client_ca {
        roots.add(ca.clone()).map_err(TlsSetupError::ClientCa)?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let verifier = if client_cert_required {
        builder.build()
    } else {
        builder.allow_unauthenticated().build()
    }
    .map_err(TlsSetupError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::ServerCert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.server_chain.clone(), tls.server_key.clone_key())
        .map_err(TlsSetupError::ServerCert)?;
    if alpn_h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}
