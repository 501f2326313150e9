//! What a simulator serves: addresses, TLS material, provider-token keys, environment, authentication policy,
//! stream limits and HTTP/2 settings, the scenario and the delivery record.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::pki::PkiManifest;
use crate::scenario::Scenario;

/// Which APNs environment the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// `api.push.apple.com`.
    Production,
    /// `api.sandbox.push.apple.com` (development); responses carry `apns-unique-id`.
    #[default]
    Sandbox,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

impl std::str::FromStr for Environment {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "production" | "prod" => Ok(Environment::Production),
            "sandbox" | "development" | "dev" => Ok(Environment::Sandbox),
            _ => Err(ConfigError::Environment(s.to_owned())),
        }
    }
}

/// How requests on connections without a client certificate are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicy {
    /// As APNs: a client certificate or a valid provider token on every request.
    #[default]
    Required,
    /// Testing aid (e.g. for h2load): a request without `authorization` on a connection without a client
    /// certificate is accepted as authenticated; a token that is present is still verified. Never what Apple does.
    AllowUnauthenticated,
}

/// What a stream opened beyond the stream limit the client has acknowledged gets (docs/apns-protocol.md#http2-connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamOverrun {
    /// `RST_STREAM(REFUSED_STREAM)` for that stream; the connection carries on.
    #[default]
    Refuse,
    /// GOAWAY (`PROTOCOL_ERROR`, the plain-text debug data [`STREAM_OVERRUN_DEBUG`], as Apple has been seen to
    /// send), that stream refused; the connection finishes the streams it took and closes.
    Goaway,
}

/// The GOAWAY debug data of [`StreamOverrun::Goaway`]: plain text, as observed from APNs.
pub const STREAM_OVERRUN_DEBUG: &str = "Maximum active streams violated for this endpoint.";

/// `SETTINGS_INITIAL_WINDOW_SIZE` observed from APNs (docs/apns-protocol.md#hpack).
pub const APPLE_INITIAL_WINDOW_SIZE: u32 = 65_535;
/// The connection window of an APNs connection: HTTP/2's initial 65,535, never raised.
pub const APPLE_CONNECTION_WINDOW_SIZE: u32 = 65_535;
/// `SETTINGS_MAX_HEADER_LIST_SIZE` observed from APNs (docs/apns-protocol.md#hpack).
pub const APPLE_MAX_HEADER_LIST_SIZE: u32 = 8000;
/// HTTP/2's largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;
/// HTTP/2's initial connection window (RFC 9113 §6.9.2): a connection window can only grow from it.
pub const INITIAL_CONNECTION_WINDOW_SIZE: u32 = 65_535;
/// In-memory delivery records kept by default ([`SimConfig::record_memory_limit`]).
pub const DEFAULT_RECORD_MEMORY_LIMIT: usize = 100_000;

/// The values `initial_window_size` may take.
pub(crate) const INITIAL_WINDOW_RANGE: (u32, u32) = (1, MAX_WINDOW_SIZE);
/// The values `connection_window_size` may take.
pub(crate) const CONNECTION_WINDOW_RANGE: (u32, u32) =
    (INITIAL_CONNECTION_WINDOW_SIZE, MAX_WINDOW_SIZE);
/// The values `max_header_list_size` may take.
pub(crate) const HEADER_LIST_RANGE: (u32, u32) = (1, u32::MAX);

/// Checks an HTTP/2 setting against its range, naming it.
pub(crate) fn check_setting(
    name: &'static str,
    value: u32,
    (min, max): (u32, u32),
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Setting {
            name,
            value,
            min,
            max,
        })
    }
}

/// Errors in the simulator's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown environment {0:?} (expected production or sandbox)")]
    Environment(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("provider key {key_id}: {message}")]
    ProviderKey { key_id: String, message: String },
    #[error("scenario {path}: {message}")]
    Scenario { path: PathBuf, message: String },
    #[error("{name} {value} is not within {min}..={max}")]
    Setting {
        name: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
}

/// A provider-token key the simulator knows (the public half of a `.p8`).
#[derive(Debug, Clone)]
pub struct ProviderKey {
    pub key_id: String,
    pub team_id: String,
    /// The `.p8` (PKCS#8 PEM) text; the simulator derives the public key from it.
    pub p8_pem: String,
    /// A team-scoped key restricted to one environment (docs/apns-protocol.md#key-scoping); `None` = both.
    pub environment: Option<Environment>,
    /// A topic-specific key: bundle ids it may push to; `None` = every topic of the team.
    pub topics: Option<Vec<String>>,
}

impl ProviderKey {
    pub fn from_p8_file(path: &Path, key_id: &str, team_id: &str) -> Result<Self, ConfigError> {
        let p8_pem = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(ProviderKey {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            p8_pem,
            environment: None,
            topics: None,
        })
    }
}

/// Server certificate chain and key plus the CA that client certificates must chain to.
#[derive(Debug)]
pub struct TlsMaterial {
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub client_ca: Vec<CertificateDer<'static>>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            server_chain: self.server_chain.clone(),
            server_key: self.server_key.clone_key(),
            client_ca: self.client_ca.clone(),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Reads PEM files: the server chain, its key, and the CA for client certificates.
    pub fn from_files(
        server_cert: &Path,
        server_key: &Path,
        client_ca: &Path,
    ) -> Result<Self, ConfigError> {
        let server_key =
            PrivateKeyDer::from_pem_file(server_key).map_err(|e| ConfigError::Pem {
                path: server_key.to_owned(),
                what: e.to_string(),
            })?;
        Ok(TlsMaterial {
            server_chain: read_certs(server_cert)?,
            server_key,
            client_ca: read_certs(client_ca)?,
        })
    }
}

/// Everything [`crate::Simulator::start`] needs. Build it with [`SimConfig::from_pki`], then adjust fields.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The address of the APNs-facing listeners (HTTP/2, binary, feedback, channel management, broadcast).
    pub listen_ip: IpAddr,
    /// The address of the admin listener only (127.0.0.1 by default, whatever `listen_ip` is): the admin API has no
    /// authentication, and it records, changes token states, sends GOAWAY and sets the pace, so a simulator serving
    /// other hosts (`listen_ip` 0.0.0.0 for staging) keeps it local unless this says otherwise.
    pub admin_ip: IpAddr,
    /// 0 = an ephemeral port (the default for every listener).
    pub h2_port: u16,
    pub binary_port: u16,
    pub feedback_port: u16,
    pub admin_port: u16,
    /// Channel management (`/1/apps/…`, docs/apns-protocol.md docs/apns-protocol.md#history).
    pub management_port: u16,
    /// Broadcast sends (`/4/broadcasts/apps/…`).
    pub broadcast_port: u16,
    pub tls: TlsMaterial,
    pub provider_keys: Vec<ProviderKey>,
    pub environment: Environment,
    pub auth: AuthPolicy,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` once a connection is authenticated (default 1000,
    /// docs/apns-protocol.md#hpack).
    pub max_concurrent_streams: u32,
    /// Drop the advertised stream limit to 1 after a rejected request and restore it after the next accepted
    /// one, as observed at Apple (docs/apns-protocol.md#http2-connection).
    pub choppy_streams: bool,
    /// What a stream beyond the acknowledged limit gets (default [`StreamOverrun::Refuse`]).
    pub stream_overrun: StreamOverrun,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`, each stream's receive window, 1..=2^31-1 (default 1 MiB; APNs:
    /// [`APPLE_INITIAL_WINDOW_SIZE`], see [`SimConfig::apple_settings`]). Also on the broadcast ports.
    pub initial_window_size: u32,
    /// The connection's receive window, 65,535..=2^31-1: above HTTP/2's initial 65,535 it is raised by a
    /// WINDOW_UPDATE right after the SETTINGS (default 8 MiB; APNs: [`APPLE_CONNECTION_WINDOW_SIZE`]).
    pub connection_window_size: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, at least 1 (default 16,384; APNs: [`APPLE_MAX_HEADER_LIST_SIZE`]); a
    /// larger request head is answered 431 and its stream reset. Also on the broadcast ports.
    pub max_header_list_size: u32,
    /// A provider token whose `iat` is older than this is refused with ExpiredProviderToken (default 1 h).
    pub token_max_age: Duration,
    /// A different token on the same connection less than this after the connection adopted its current one is
    /// refused with 429 TooManyProviderTokenUpdates (default 20 min); a connection's first token never is.
    pub token_update_interval: Duration,
    /// A request whose body has not ended this long after its HEADERS has its stream reset
    /// (`RST_STREAM(REFUSED_STREAM)`: not processed), so that a stalled stream neither holds its place under the
    /// stream limit nor keeps the connection from its idle close (default 10 s). Also on the broadcast ports.
    pub body_timeout: Duration,
    /// Add `apns-unique-id` to responses; `None` = only in the sandbox environment.
    pub unique_id: Option<bool>,
    pub scenario: Scenario,
    /// Append every accepted notification to this file as a JSON line.
    pub record_path: Option<PathBuf>,
    /// Keep accepted notifications in memory for [`crate::SimHandle::record`] (default true).
    pub record_in_memory: bool,
    /// The most notifications kept in memory (at least 1; default [`DEFAULT_RECORD_MEMORY_LIMIT`]): beyond, the
    /// oldest is dropped and counted ([`crate::SimHandle::record_dropped`]), so a long run does not grow without
    /// bound. The `record_path` file keeps every one.
    pub record_memory_limit: usize,
}

impl SimConfig {
    /// A configuration serving the PKI of `manifest` (its server certificate, its CA for client certificates,
    /// its `.p8` key) with every default: sandbox, authentication required, ephemeral ports on 127.0.0.1 (the admin
    /// port included).
    pub fn from_pki(manifest: &PkiManifest) -> Result<SimConfig, ConfigError> {
        let tls = TlsMaterial::from_files(
            &manifest.server_cert,
            &manifest.server_key,
            &manifest.ca_cert,
        )?;
        let key =
            ProviderKey::from_p8_file(&manifest.token_key.p8, &manifest.key_id, &manifest.team_id)?;
        Ok(SimConfig::new(tls, vec![key]))
    }

    pub fn new(tls: TlsMaterial, provider_keys: Vec<ProviderKey>) -> SimConfig {
        SimConfig {
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            h2_port: 0,
            binary_port: 0,
            feedback_port: 0,
            admin_port: 0,
            management_port: 0,
            broadcast_port: 0,
            tls,
            provider_keys,
            environment: Environment::Sandbox,
            auth: AuthPolicy::Required,
            max_concurrent_streams: 1000,
            choppy_streams: false,
            stream_overrun: StreamOverrun::Refuse,
            initial_window_size: 1 << 20,
            connection_window_size: 8 << 20,
            max_header_list_size: 16 * 1024,
            token_max_age: Duration::from_secs(3600),
            token_update_interval: Duration::from_secs(20 * 60),
            body_timeout: Duration::from_secs(10),
            unique_id: None,
            scenario: Scenario::default(),
            record_path: None,
            record_in_memory: true,
            record_memory_limit: DEFAULT_RECORD_MEMORY_LIMIT,
        }
    }

    /// Applies the HTTP/2 settings observed from APNs (docs/apns-protocol.md#hpack): stream window 65,535, a
    /// connection window never raised from 65,535, header lists of at most 8000 bytes.
    pub fn apple_settings(&mut self) {
        self.initial_window_size = APPLE_INITIAL_WINDOW_SIZE;
        self.connection_window_size = APPLE_CONNECTION_WINDOW_SIZE;
        self.max_header_list_size = APPLE_MAX_HEADER_LIST_SIZE;
    }

    /// Refuses HTTP/2 settings the simulator cannot serve, naming the field and its range.
    pub(crate) fn check_settings(&self) -> Result<(), ConfigError> {
        check_setting(
            "initial_window_size",
            self.initial_window_size,
            INITIAL_WINDOW_RANGE,
        )?;
        check_setting(
            "connection_window_size",
            self.connection_window_size,
            CONNECTION_WINDOW_RANGE,
        )?;
        check_setting(
            "max_header_list_size",
            self.max_header_list_size,
            HEADER_LIST_RANGE,
        )
    }

    pub(crate) fn sends_unique_id(&self) -> bool {
        self.unique_id
            .unwrap_or(self.environment == Environment::Sandbox)
    }
}
