//! Helpers shared by the integration tests that run herald against the APNs simulator: a free loopback port, the
//! options or settings that point a domain at a simulator with the test PKI's credentials, a reader of
//! Momentum-format log lines, and `herald serve` started as a process with its standard error in a file.
#![allow(dead_code)]

pub mod daemon;
pub mod nats;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald::outbound::settings::{DeliverySettings, RouteProtocol};
use herald::queue::retry::{MaxRetries, RetryPolicy};
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::{RootSource, client_config};
use herald_apns::provider_token::{ProviderTokenCache, SigningKey};
use herald_sim::{Pki, SimHandle};

/// A TCP port on 127.0.0.1 that nothing listens on right now (for a simulator started later, or a closed route),
/// outside the ephemeral range (see [`herald_testkit::free_port`]).
pub fn free_port() -> u16 {
    herald_testkit::free_port()
}

/// The lines of a `domain` stanza that deliver over HTTP/2 to a simulator on 127.0.0.1:`port` with token auth:
/// the route, the PKI's CA (verified), its provider key (key id, team id) and `topic`.
pub fn token_auth_options(pki: &Pki, port: u16, topic: &str) -> String {
    let m = &pki.manifest;
    format!(
        r#"  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{topic}"
"#,
        ca = m.ca_cert.display(),
        p8 = m.token_key.p8.display(),
        kid = m.token_key.key_id,
        tid = m.token_key.team_id,
    )
}

/// The configuration lines of a domain that reaches the simulator at `port` with the universal client certificate
/// of `topic` from a `herald sim pki` directory (the certificate variant every topic has).
pub fn cert_auth_options(pki: &Pki, port: u16, topic: &str) -> String {
    let client = pki
        .client(topic, herald_sim::CertVariant::Universal)
        .expect("the test PKI has a universal certificate for its topic");
    format!(
        r#"  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_topic = "{topic}"
"#,
        ca = pki.manifest.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

/// Settings for a test domain: default binding, 30 s idle timeout, 5 s answer and connect timeouts, retries after
/// 20–100 ms without limit, 2 connections, and a message expiration and APNs expiration of 48 hours (past any retry
/// a test schedules: a retry that would come at or after the APNs expiration fails at once); tests change what they
/// exercise.
pub fn test_settings(
    domain: &str,
    topic: &str,
    protocol: RouteProtocol,
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    auth: Option<ProviderTokenCache>,
) -> DeliverySettings {
    DeliverySettings {
        domain: Arc::from(domain),
        binding_group: Arc::from("default"),
        binding: Arc::from("default"),
        protocol,
        endpoint,
        tls,
        auth,
        default_topic: Some(Arc::from(topic)),
        certificate_topic: None,
        max_connections: 2,
        host_budget: None,
        idle_timeout: Some(Duration::from_secs(30)),
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(30),
        mx_failures_to_delay: 50,
        retry: RetryPolicy {
            retry_interval: Duration::from_millis(20),
            max_retry_interval: Duration::from_millis(100),
            max_retries: MaxRetries::Unlimited,
            message_expiration: Duration::from_secs(48 * 3600),
            never_attempt_expired: false,
        },
        apn_expiry: Duration::from_secs(48 * 3600),
        max_window: 10_000,
    }
}

/// [`test_settings`] that deliver `domain` to the simulator's HTTP/2 port with the PKI's provider key (token
/// auth): what the listener tests that run an engine without a configuration file use.
pub fn token_auth_settings(
    pki: &Pki,
    sim: &SimHandle,
    domain: &str,
    topic: &str,
) -> DeliverySettings {
    let tls = client_config(None, RootSource::CaFile(pki.manifest.ca_cert.clone()), true).unwrap();
    let key = &pki.manifest.token_key;
    let signing = SigningKey::from_p8_file(&key.p8, &key.key_id, &key.team_id).unwrap();
    test_settings(
        domain,
        topic,
        RouteProtocol::Http2,
        Endpoint::new(sim.addrs.h2.ip().to_string(), sim.addrs.h2.port()),
        tls,
        Some(ProviderTokenCache::new(signing, Duration::from_secs(3000)).unwrap()),
    )
}

/// The lines of a Momentum-format log (mainlog, apn_logger) split into fields on `@` not escaped by a backslash.
pub fn log_fields(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut fields = vec![String::new()];
            let mut escaped = false;
            for c in line.chars() {
                match (escaped, c) {
                    (true, c) => {
                        fields.last_mut().unwrap().push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '@') => fields.push(String::new()),
                    (false, c) => fields.last_mut().unwrap().push(c),
                }
            }
            fields
        })
        .collect()
}

/// Starts `herald serve -c CONFIG` (the built binary) with `RUST_LOG=log` and its standard error in
/// `dir/stderr.log`; returns the process once it printed its ready line, which must name its http listener, with
/// that file's path. The caller stops the process.
pub fn serve_until_ready(
    config: &Path,
    dir: &Path,
    log: &str,
) -> (std::process::Child, std::path::PathBuf) {
    use std::io::BufRead;
    let err_path = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("http"),
        "ready line: {line:?}; stderr: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    (child, err_path)
}
