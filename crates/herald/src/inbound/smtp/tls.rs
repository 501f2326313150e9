//! A listener's TLS server identity, the one rule for every listener kind: the `tls_certificate` chain (PEM, leaf
//! first) and the private key of `tls_key`, or, when `tls_key` is not set, the key held in the certificate file
//! itself (docs/smtp.md, docs/configuration.md). Builds the STARTTLS configuration of an ESMTP listener and the TLS
//! configuration of a control listener, with rustls on the aws-lc-rs provider; [`certified_key`] is the identity
//! alone, for listeners that build their own configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What a file lacks when it holds no private key.
const NO_KEY: &str = "holds no private key (PEM PRIVATE KEY block)";

/// Why a listener's TLS identity could not be loaded. Each names the option the operator set and its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls_certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("tls_key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration for {path}: {source}")]
    Rustls {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Loads `cert` and `key` (`None`: the key is looked for in the certificate file) into a server configuration.
pub fn server_config(
    cert: &Path,
    key: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let (chain, private_key) = load(cert, key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private_key))
        .map_err(|source| TlsSetupError::Rustls {
            path: cert.to_owned(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// The certificate chain of `cert` and the key of `key` (`None`: of the certificate file), checked to belong
/// together.
pub fn certified_key(cert: &Path, key: Option<&Path>) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let (chain, private_key) = load(cert, key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, private_key, &provider)
        .map(Arc::new)
        .map_err(|source| TlsSetupError::Rustls {
            path: cert.to_owned(),
            source,
        })
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load(cert: &Path, key: Option<&Path>) -> Result<Identity, TlsSetupError> {
    let cert_err = |reason: String| TlsSetupError::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let private_key = match key {
        // The combined file: the key is the certificate file's, and a missing one is the certificate's fault.
        None => private_key(&cert_pem).map_err(|reason| {
            cert_err(format!("{reason}; set tls_key, or add the key to the file"))
        })?,
        Some(key_path) => {
            let key_err = |reason: String| TlsSetupError::Key {
                path: key_path.to_owned(),
                reason,
            };
            let key_pem = std::fs::read(key_path).map_err(|e| key_err(e.to_string()))?;
            private_key(&key_pem).map_err(key_err)?
        }
    };
    Ok((chain, private_key))
}

/// The first private key in `pem`, or what is wrong, in words.
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => NO_KEY.to_owned(),
        other => format!("no usable private key ({other})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_option_and_path() {
        let e = server_config(Path::new("/nonexistent/cert.pem"), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tls_certificate /nonexistent/cert.pem: "),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "nothing here\n").unwrap();
        let e = server_config(&p, None).unwrap_err();
        assert!(
            e.to_string().ends_with("no PEM certificate in the file"),
            "{e}"
        );
    }

    /// The PEM certificate and key of a server identity (the simulator's PKI), read from the files it writes.
    fn identity() -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            herald_sim::pki::Pki::generate(dir.path(), &["com.example.app".to_owned()]).unwrap();
        (
            std::fs::read_to_string(&pki.manifest.server_cert).unwrap(),
            std::fs::read_to_string(&pki.manifest.server_key).unwrap(),
        )
    }

    /// A certificate file without a key and no tls_key: the error names tls_certificate (the option set) and what
    /// the file lacks, not tls_key and "no items found".
    #[test]
    fn a_certificate_file_without_its_key_names_tls_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.pem");
        std::fs::write(&p, identity().0).unwrap();
        for e in [
            server_config(&p, None).unwrap_err(),
            certified_key(&p, None).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("tls_certificate {}: ", p.display())),
                "{text}"
            );
            assert!(text.contains(NO_KEY), "{text}");
            assert!(!text.contains("no items found"), "{text}");
        }
    }

    #[test]
    fn a_key_file_without_a_key_names_tls_key() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, _) = identity();
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &cert).unwrap();
        let e = server_config(&c, Some(&k)).unwrap_err().to_string();
        assert_eq!(e, format!("tls_key {}: {NO_KEY}", k.display()));
    }

    /// Certificate and key in one file, or in two: both load, as server configuration and as identity.
    #[test]
    fn a_combined_file_and_separate_files_both_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity();
        let (c, k, both) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("both.pem"),
        );
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        std::fs::write(&both, format!("{cert}{key}")).unwrap();
        server_config(&both, None).unwrap();
        certified_key(&both, None).unwrap();
        server_config(&c, Some(&k)).unwrap();
        certified_key(&c, Some(&k)).unwrap();
    }
}
