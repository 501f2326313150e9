//! Shared helpers for the simulator's integration tests: a PKI per test, TLS clients, an h2 client, JWTs,
//! and external tools (which must be installed: a missing tool fails the test with a message).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_apns::provider_token::SigningKey;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const TOPIC: &str = "com.example.herald";

pub struct TestSim {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub sim: SimHandle,
}

pub fn pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
    (dir, pki)
}

pub async fn start_with(edit: impl FnOnce(&mut SimConfig, &Pki)) -> TestSim {
    let (dir, pki) = pki();
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    edit(&mut config, &pki);
    let sim = Simulator::start(config).await.unwrap();
    TestSim { dir, pki, sim }
}

pub async fn start() -> TestSim {
    start_with(|_, _| {}).await
}

pub fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn signing_key(pki: &Pki) -> SigningKey {
    let m = &pki.manifest;
    SigningKey::from_p8_file(&m.token_key.p8, &m.key_id, &m.team_id).unwrap()
}

pub fn jwt(pki: &Pki, iat: u64) -> String {
    signing_key(pki).sign(iat).unwrap()
}

/// The same token with its signature re-encoded as DER (as `openssl dgst -sign` produces).
pub fn jwt_der(pki: &Pki, iat: u64) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jose = jwt(pki, iat);
    let dot = jose.rfind('.').unwrap();
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&jose[dot + 1..])
        .unwrap()
        .try_into()
        .unwrap();
    let der = herald_apns::provider_token::jose_signature_to_der(&sig);
    format!("{}.{}", &jose[..dot], URL_SAFE_NO_PAD.encode(der))
}

pub fn client_config(
    pki: &Pki,
    identity: Option<(&Path, &Path)>,
    alpn: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.manifest.ca_cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => b.with_no_client_auth(),
    };
    if alpn {
        cfg.alpn_protocols = vec![b"h2".to_vec()];
    }
    Arc::new(cfg)
}

pub fn cert_identity(pki: &Pki, variant: CertVariant) -> (PathBuf, PathBuf) {
    let f = pki.client(TOPIC, variant).unwrap();
    (f.cert.clone(), f.key.clone())
}

pub async fn tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

pub type H2Client = h2::client::SendRequest<Bytes>;

/// Opens an h2 connection; the connection future runs on its own task.
pub async fn h2_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> H2Client {
    let io = tls(addr, cfg).await;
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn reason(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["reason"].as_str().map(str::to_owned)
    }
}

/// Sends one request: `headers` are (name, value) pairs added in order (repeats allowed).
pub async fn send(
    client: &mut H2Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let mut c = client.clone().ready().await.unwrap();
    let (resp, mut stream) = c.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        // The simulator may answer, and close the stream, before the body is written: its answer is read.
        let _ = stream.send_data(Bytes::copy_from_slice(body), true);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    let (parts, mut recv) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: out,
    }
}

pub const PAYLOAD: &[u8] = br#"{"aps":{"alert":"hello"}}"#;

/// A required external tool, or a failing test naming how to install it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; install it with `apt-get install -y {package}` (this test needs it)"
    );
}

/// Waits (bounded) until `cond` holds on the simulator's stats.
pub async fn wait_stats(
    sim: &SimHandle,
    what: &str,
    cond: impl Fn(&herald_sim::StatsSnapshot) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = sim.stats();
        if cond(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
