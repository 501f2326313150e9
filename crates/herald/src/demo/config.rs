//! The demo configuration: an ordinary herald configuration file (the same language and options an operator
//! writes) with listeners on ephemeral loopback ports, logs and spool in the scratch directory, and one domain
//! per demo app routed to the simulator.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_sim::{CertVariant, PkiManifest};

use super::plan::{APPS, AppKind};

/// Where the demo's files are.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    pub config: PathBuf,
    pub spool: PathBuf,
    pub mainlog: PathBuf,
    pub apnlog: PathBuf,
}

impl DemoPaths {
    pub fn new(dir: &Path) -> DemoPaths {
        DemoPaths {
            config: dir.join("herald.conf"),
            spool: dir.join("spool"),
            mainlog: dir.join("logs/mainlog.ec"),
            apnlog: dir.join("logs/apnlog.ec"),
        }
    }
}

/// Why the configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DemoConfigError {
    #[error("the test PKI has no universal client certificate for {0}")]
    MissingClient(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The configuration text. `h2` and `binary` are the simulator's addresses; `api_key` protects the REST API.
pub fn render(
    paths: &DemoPaths,
    pki: &PkiManifest,
    h2: SocketAddr,
    binary: SocketAddr,
    api_key: &str,
) -> Result<String, DemoConfigError> {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# herald demo: three apps delivering to the APNs simulator on this machine.\n\
         spool_dir = {spool}\n\
         ec_logger \"main\" {{ mainlog = {mainlog} }}\n\
         apn_logger \"apn\" {{ logfile = {apnlog} }}\n\
         http_listener {{ listen \"127.0.0.1:0\" {{ api_key = {key:?} dashboard_admin_keys = ( {key:?} ) \
         http_services = ( inject push tokens metrics dashboard ) }} }}\n\
         esmtp_listener {{ listen \"127.0.0.1:0\" {{ mcmt_reception = allow }} }}\n",
        spool = q(&paths.spool),
        mainlog = q(&paths.mainlog),
        apnlog = q(&paths.apnlog),
        key = api_key,
    );
    for app in APPS {
        let _ = writeln!(
            text,
            "domain {:?} {{\n  delivery_method = apn\n  apn_topic = {:?}\n  tls_verify = ca\n  tls_ca = {}\n  \
             retry_interval = 1\n  max_retry_interval = 5",
            app.domain,
            app.topic,
            q(&pki.ca_cert)
        );
        let client = || {
            pki.clients
                .get(app.topic)
                .and_then(|v| v.get(CertVariant::Universal.as_str()))
                .ok_or_else(|| DemoConfigError::MissingClient(app.topic.to_owned()))
        };
        match app.kind {
            AppKind::H2Token => {
                let _ = writeln!(
                    text,
                    "  routes = ( \"https://{h2}\" )\n  apn_key = {}\n  apn_key_id = {:?}\n  apn_team_id = {:?}",
                    q(&pki.token_key.p8),
                    pki.token_key.key_id,
                    pki.token_key.team_id
                );
            }
            AppKind::H2Cert => {
                let c = client()?;
                let _ = writeln!(
                    text,
                    "  routes = ( \"https://{h2}\" )\n  tls_certificate = {}\n  tls_key = {}",
                    q(&c.cert),
                    q(&c.key)
                );
            }
            AppKind::Binary => {
                let c = client()?;
                // No per-notification answer in the binary protocol: silence for this long means accepted. Long
                // enough for a machine loaded by a large run to send an error packet in time; the idle timeout
                // (seconds) must outlast it.
                let _ = writeln!(
                    text,
                    "  routes = ( \"apn://{}?port={}\" )\n  tls_certificate = {}\n  tls_key = {}\n  \
                     delivery_response_timeout = 3000\n  idle_timeout = 10",
                    binary.ip(),
                    binary.port(),
                    q(&c.cert),
                    q(&c.key)
                );
            }
        }
        text.push_str("}\n");
    }
    Ok(text)
}

/// Writes the configuration to `paths.config`.
pub fn write(
    paths: &DemoPaths,
    pki: &PkiManifest,
    h2: SocketAddr,
    binary: SocketAddr,
    api_key: &str,
) -> Result<(), DemoConfigError> {
    let text = render(paths, pki, h2, binary, api_key)?;
    std::fs::write(&paths.config, text).map_err(|source| DemoConfigError::Write {
        path: paths.config.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_routes_each_app() {
        let dir = tempfile::tempdir().unwrap();
        let topics: Vec<String> = APPS.iter().map(|a| a.topic.to_string()).collect();
        let pki = herald_sim::Pki::generate(&dir.path().join("pki"), &topics).unwrap();
        let paths = DemoPaths::new(dir.path());
        let h2: SocketAddr = "127.0.0.1:4431".parse().unwrap();
        let bin: SocketAddr = "127.0.0.1:2195".parse().unwrap();
        write(&paths, &pki.manifest, h2, bin, "k").unwrap();
        let config = herald_conf::Config::load(&paths.config)
            .unwrap_or_else(|d| panic!("{d}\n{}", std::fs::read_to_string(&paths.config).unwrap()));
        let binary = config.domain_settings(None, None, "binary.demo.example");
        assert_eq!(binary.routes[0].to_string(), "apn://127.0.0.1?port=2195");
        assert_eq!(
            binary.delivery_response_timeout,
            std::time::Duration::from_millis(3000)
        );
        assert!(binary.idle_timeout > binary.delivery_response_timeout);
        let token = config.domain_settings(None, None, "token.demo.example");
        assert_eq!(token.apn_topic.as_deref(), Some("com.example.demo.token"));
        assert!(token.apn_key.is_some());
        let cert = config.domain_settings(None, None, "cert.demo.example");
        assert!(cert.tls_certificate.is_some() && cert.apn_key.is_none());
    }
}
