//! `tls_verify = ca` checks the APNs server's chain against `tls_ca` but not its name (docs/configuration.md;
//! Momentum's `ca` checks against TLS_CA, momentum.md §5): a route by IP address to a simulator whose certificate,
//! issued by the configured CA, names another host is reached on every port herald opens (HTTP/2 delivery, binary,
//! feedback, channel management, broadcasts), by `herald check --connect` too; `host` refuses it, naming the name
//! it wanted; `ca` refuses a certificate from another CA. Real TLS on 127.0.0.1; the certificate for the other
//! name is issued with the `openssl` command from the test PKI's CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use herald::delivery::ConfigResolver;
use herald::queue::SettingsResolver;
use herald_apns::client::connect::{Endpoint, connect_tls};
use herald_conf::Config;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const TOPIC: &str = "com.example.tlsverify";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `openssl ARGS`, panicking with its error output when it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` command (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server certificate for `DNS:wrong.example` only, for the PKI's server key, issued by the PKI's CA.
fn wrong_name_certificate(pki: &Pki, dir: &Path) -> PathBuf {
    let m = &pki.manifest;
    let csr = dir.join("wrong.csr");
    let ext = dir.join("wrong.ext");
    let cert = dir.join("wrong.pem");
    std::fs::write(
        &ext,
        "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:wrong.example\n",
    )
    .unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-new",
        "-key",
        &path(&m.server_key),
        "-subj",
        "/CN=wrong.example",
        "-out",
        &path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-CA",
        &path(&m.ca_cert),
        "-CAkey",
        &path(&m.ca_key),
        "-set_serial",
        "4242",
        "-days",
        "30",
        "-extfile",
        &path(&ext),
        "-out",
        &path(&cert),
    ]);
    cert
}

/// A simulator of `pki` presenting the certificate at `server_cert` (signed for the PKI's server key).
async fn simulator(pki: &Pki, server_cert: Option<&Path>) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    if let Some(cert) = server_cert {
        config.tls.server_chain = vec![CertificateDer::from_pem_file(cert).unwrap()];
    }
    Simulator::start(config).await.unwrap()
}

/// Two domains reaching `sim` by IP address with `verify` and the CA of `trusted`: `h2.example` over HTTP/2 with
/// the provider key, `bin.example` over the binary protocol with a client certificate.
fn config_text(trusted: &Pki, client: &Pki, sim: &SimHandle, verify: &str) -> String {
    let c = client.client(TOPIC, CertVariant::Universal).unwrap();
    let k = &client.manifest.token_key;
    format!(
        r#"
domain "h2.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{h2}" )
  tls_verify = {verify}
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{TOPIC}"
}}
domain "bin.example" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port={bin}" )
  tls_verify = {verify}
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
}}
"#,
        h2 = sim.addrs.h2.port(),
        bin = sim.addrs.binary.port(),
        ca = trusted.manifest.ca_cert.display(),
        p8 = k.p8.display(),
        kid = k.key_id,
        tid = k.team_id,
        cert = c.cert.display(),
        key = c.key.display(),
    )
}

fn resolver(text: &str) -> ConfigResolver {
    ConfigResolver::new(Arc::new(Config::parse_str("herald.conf", text).unwrap()))
}

/// Connects to `addr` by its IP address with `tls`: the error's text, if any.
async fn reach(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let endpoint = Endpoint::new(addr.ip().to_string(), addr.port());
    connect_tls(&endpoint, tls, TIMEOUT)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Every TLS connection herald opens for the two domains: delivery over HTTP/2 and the binary protocol, the
/// feedback service, channel management and broadcasts (the domain's HTTP/2 credentials), by port name.
async fn connections(
    resolver: &ConfigResolver,
    sim: &SimHandle,
) -> Vec<(&'static str, Result<(), String>)> {
    let h2 = resolver.resolve("h2.example").unwrap();
    let bin = resolver.resolve("bin.example").unwrap();
    let creds = resolver.http2_credentials("h2.example").unwrap();
    vec![
        ("h2", reach(sim.addrs.h2, h2.tls.clone()).await),
        ("binary", reach(sim.addrs.binary, bin.tls.clone()).await),
        ("feedback", reach(sim.addrs.feedback, bin.tls.clone()).await),
        (
            "management",
            reach(sim.addrs.management, creds.tls.clone()).await,
        ),
        (
            "broadcast",
            reach(sim.addrs.broadcast, creds.tls.clone()).await,
        ),
    ]
}

fn check_connect(dir: &Path, text: &str) -> (i32, String) {
    let path = dir.join("check.conf");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check", "--connect", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_accepts_a_certificate_for_another_name_and_host_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let cert = wrong_name_certificate(&pki, dir.path());
    let sim = simulator(&pki, Some(&cert)).await;

    let ca = config_text(&pki, &pki, &sim, "ca");
    for (port, result) in connections(&resolver(&ca), &sim).await {
        assert_eq!(result, Ok(()), "tls_verify = ca, {port} port");
    }
    let (code, err) = check_connect(dir.path(), &ca);
    assert_eq!(code, 0, "{err}");

    let host = config_text(&pki, &pki, &sim, "host");
    for (port, result) in connections(&resolver(&host), &sim).await {
        let err = result.expect_err(port);
        assert!(
            err.contains("not valid for name \"127.0.0.1\""),
            "tls_verify = host, {port} port: {err}"
        );
    }
    let (code, err) = check_connect(dir.path(), &host);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_refuses_a_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Pki::generate(&dir.path().join("trusted"), &[TOPIC.to_string()]).unwrap();
    let other = Pki::generate(&dir.path().join("other"), &[TOPIC.to_string()]).unwrap();
    // The other PKI's own server certificate names 127.0.0.1: only its issuer is wrong. Both test CAs have the
    // same name, so the chain is built up to the trusted CA, whose key did not sign it.
    let sim = simulator(&other, None).await;

    let text = config_text(&trusted, &other, &sim, "ca");
    for (port, result) in connections(&resolver(&text), &sim).await {
        let err = result.expect_err(port);
        assert!(
            err.contains("invalid peer certificate: BadSignature")
                || err.contains("invalid peer certificate: UnknownIssuer"),
            "{port} port: {err}"
        );
    }
}
