//! Real TLS handshakes on 127.0.0.1 between a rustls server that asks for a client certificate and clients
//! built by `identity::client_config` from identities loaded off disk (PEM and PKCS#12).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "herald test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
        "com.example.app",
    );
    client_params
        .distinguished_name
        .push(DnType::CommonName, "Apple Push Services: com.example.app");
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    Pki {
        ca_pem: ca_cert.pem(),
        server_chain: vec![server_cert.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// A one-connection TLS server requiring a client certificate from the CA; it answers "ok <ALPN>" and
/// reports the client certificate it saw.
fn serve_once(
    pki: &Pki,
) -> (
    u16,
    thread::JoinHandle<Result<Option<CertificateDer<'static>>, String>>,
) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let alpn = tls
            .conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        tls.write_all(format!("ok {alpn}").as_bytes())
            .map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Ok(tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first().cloned()))
    });
    (port, handle)
}

fn talk(config: Arc<rustls::ClientConfig>, port: u16) -> Result<String, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"hello").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    match tls.read_to_string(&mut reply) {
        Ok(_) => Ok(reply),
        Err(e) if !reply.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(reply),
        Err(e) => Err(e.to_string()),
    }
}

fn write(dir: &Path, name: &str, data: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn mutual_tls_with_a_pem_identity_and_a_ca_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "client.pem", &pki.client_cert_pem);
    let key = write(dir.path(), "client.key", &pki.client_key_pem);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let id = ClientIdentity::from_pem_files(&cert, Some(&key)).unwrap();
    assert_eq!(
        id.check(SystemTime::now()).unwrap().uid.as_deref(),
        Some("com.example.app")
    );

    let (port, server) = serve_once(&pki);
    let reply = talk(
        client_config(Some(&id), RootSource::CaFile(ca), true).unwrap(),
        port,
    )
    .unwrap();
    assert_eq!(reply, "ok h2");
    let seen = server
        .join()
        .unwrap()
        .unwrap()
        .expect("server saw a client certificate");
    assert_eq!(seen.as_ref(), id.leaf().as_ref());
}

#[test]
fn pkcs12_identity_and_no_alpn() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "client.pem", &pki.client_cert_pem);
    let key = write(dir.path(), "client.key", &pki.client_key_pem);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let p12 = dir.path().join("client.p12");
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:pw", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` command (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = ClientIdentity::from_pkcs12(&p12, "pw").unwrap();

    let (port, server) = serve_once(&pki);
    let reply = talk(
        client_config(Some(&id), RootSource::CaFile(ca), false).unwrap(),
        port,
    )
    .unwrap();
    assert_eq!(reply, "ok ", "no ALPN offered, none negotiated");
    assert!(server.join().unwrap().unwrap().is_some());
}

#[test]
fn verification_modes() {
    let pki = pki();
    // The bundled public roots do not know the test CA: the handshake fails.
    let (port, server) = serve_once(&pki);
    let err = talk(client_config(None, RootSource::System, true).unwrap(), port).unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
    let _ = server.join().unwrap();
    // NoVerify accepts it (and the server allows a client without a certificate).
    let (port, server) = serve_once(&pki);
    let reply = talk(
        client_config(None, RootSource::NoVerify, true).unwrap(),
        port,
    )
    .unwrap();
    assert_eq!(reply, "ok h2");
    assert_eq!(server.join().unwrap().unwrap(), None);
}
