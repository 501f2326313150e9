//! From configuration to delivery: resolves a domain's options (herald-conf) into [`DeliverySettings`], loading
//! each TLS identity and provider key once and sharing one provider-token cache per key across every domain
//! and connection that uses it (so a key's token is refreshed once, never per connection).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_apns::binary::BinaryFormat;
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use herald_apns::provider_token::{ProviderTokenCache, SigningKey};
use herald_conf::{ApnBinaryFormat, Config, DeliveryMethod, DomainSettings, TlsVerify};

use crate::outbound::settings::{DeliverySettings, RouteProtocol};
use crate::queue::SettingsResolver;
use crate::queue::retry::{MaxRetries, RetryPolicy};

/// Default provider-token lifetime before a refresh (apns.md §4.1: between 20 and 60 minutes).
const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(60);
const MAX_WINDOW: usize = 100_000;

/// The client identity a domain names: `tls_pkcs12` (with its password) first, else `tls_certificate` with
/// `tls_key`. Returns the file it came from; `None` when the domain names neither. Errors name the option and file.
pub fn load_identity(d: &DomainSettings) -> Option<(PathBuf, Result<ClientIdentity, String>)> {
    if let Some(p12) = &d.tls_pkcs12 {
        let password = d.tls_pkcs12_password.as_deref().unwrap_or("");
        let identity = ClientIdentity::from_pkcs12(p12, password)
            .map_err(|e| format!("tls_pkcs12 {}: {e}", p12.display()));
        return Some((p12.clone(), identity));
    }
    let cert = d.tls_certificate.as_ref()?;
    let identity = ClientIdentity::from_pem_files(cert, d.tls_key.as_deref())
        .map_err(|e| format!("tls_certificate {}: {e}", cert.display()));
    Some((cert.clone(), identity))
}

/// Resolves domains against a loaded configuration.
pub struct ConfigResolver {
    config: std::sync::RwLock<Arc<Config>>,
    keys: Mutex<HashMap<(PathBuf, String, String), ProviderTokenCache>>,
    tls: Mutex<HashMap<TlsKey, Arc<rustls::ClientConfig>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    pkcs12: Option<PathBuf>,
    verify: String,
    ca: Option<PathBuf>,
    h2: bool,
}

impl ConfigResolver {
    pub fn new(config: Arc<Config>) -> Self {
        ConfigResolver {
            config: std::sync::RwLock::new(config),
            keys: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new configuration in force (after a reload). Credentials are read again on next use, so a renewed
    /// certificate or key file takes effect; provider-token caches of unchanged keys are kept (a new cache would
    /// mint a token early).
    pub fn replace(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn token_cache(&self, d: &DomainSettings) -> Result<Option<ProviderTokenCache>, String> {
        let Some(path) = &d.apn_key else {
            return Ok(None);
        };
        let key_id = d
            .apn_key_id
            .clone()
            .ok_or("apn_key is set but apn_key_id is not")?;
        let team_id = d
            .apn_team_id
            .clone()
            .ok_or("apn_key is set but apn_team_id is not")?;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let cache_key = (path.clone(), key_id.clone(), team_id.clone());
        if let Some(cache) = keys.get(&cache_key) {
            return Ok(Some(cache.clone()));
        }
        let key = SigningKey::from_p8_file(path, &key_id, &team_id)
            .map_err(|e| format!("apn_key {}: {e}", path.display()))?;
        let cache = ProviderTokenCache::new(key, TOKEN_REFRESH)
            .map_err(|e| format!("apn_key {}: signing a provider token: {e}", path.display()))?;
        keys.insert(cache_key, cache.clone());
        Ok(Some(cache))
    }

    fn tls_config(
        &self,
        d: &DomainSettings,
        h2: bool,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = TlsKey {
            certificate: d.tls_certificate.clone(),
            key: d.tls_key.clone(),
            pkcs12: d.tls_pkcs12.clone(),
            verify: format!("{:?}", d.tls_verify),
            ca: d.tls_ca.clone(),
            h2,
        };
        let mut cache = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let identity = load_identity(d).map(|(_, identity)| identity).transpose()?;
        let roots = match (d.tls_verify, &d.tls_ca) {
            (TlsVerify::No, _) => RootSource::NoVerify,
            (_, Some(ca)) => RootSource::CaFile(ca.clone()),
            (_, None) => RootSource::System,
        };
        let config = client_config(identity.as_ref(), roots, h2).map_err(|e| e.to_string())?;
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// Builds the settings of one domain (default binding).
    pub fn build(&self, domain: &str) -> Result<DeliverySettings, String> {
        let d = self.config().domain_settings(None, None, domain);
        if d.delivery_method != DeliveryMethod::Apn {
            return Err(format!(
                "delivery_method is {:?}; herald delivers only with delivery_method = apn",
                d.delivery_method
            ));
        }
        let route = d.routes.first().ok_or("no routes are configured")?;
        let protocol = match route.protocol {
            herald_conf::RouteProtocol::Http2 => RouteProtocol::Http2,
            herald_conf::RouteProtocol::Binary => {
                RouteProtocol::Binary(match d.apn_binary_format {
                    ApnBinaryFormat::Frame => BinaryFormat::Frame,
                    ApnBinaryFormat::Enhanced => BinaryFormat::Enhanced,
                })
            }
        };
        let h2 = protocol == RouteProtocol::Http2;
        let auth = if h2 { self.token_cache(&d)? } else { None };
        if !h2 && d.tls_certificate.is_none() && d.tls_pkcs12.is_none() {
            return Err(
                "the binary protocol needs a client certificate (tls_certificate or tls_pkcs12)"
                    .into(),
            );
        }
        let tls = self.tls_config(&d, h2)?;
        let retry = RetryPolicy {
            retry_interval: d.retry.retry_interval,
            max_retry_interval: d.retry.max_retry_interval,
            max_retries: match d.retry.max_retries {
                herald_conf::MaxRetries::Auto => MaxRetries::Auto,
                herald_conf::MaxRetries::None => MaxRetries::Unlimited,
                herald_conf::MaxRetries::Count(n) => MaxRetries::Limit(n),
            },
            message_expiration: d.retry.message_expiration,
            never_attempt_expired: d.retry.never_attempt_expired_messages,
        };
        let max_connections = if d.max_outbound_connections < 0 {
            usize::MAX
        } else {
            usize::try_from(d.max_outbound_connections)
                .unwrap_or(usize::MAX)
                .max(1)
        };
        Ok(DeliverySettings {
            domain: Arc::from(domain),
            binding_group: Arc::from(d.binding_group.as_deref().unwrap_or("default")),
            binding: Arc::from(d.binding.as_deref().unwrap_or("default")),
            protocol,
            endpoint: Endpoint::new(route.host.clone(), route.port),
            tls,
            auth,
            default_topic: d.apn_topic.as_deref().map(Arc::from),
            max_connections,
            idle_timeout: (!d.idle_timeout.is_zero()).then_some(d.idle_timeout),
            response_timeout: d.delivery_response_timeout.max(Duration::from_millis(1)),
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: KEEPALIVE,
            mx_failures_to_delay: d.mx_failures_to_delay,
            retry,
            apn_expiry: d.apn_expiry,
            max_window: MAX_WINDOW,
        })
    }
}

impl SettingsResolver for ConfigResolver {
    fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, String> {
        self.build(domain).map(Arc::new)
    }
}
