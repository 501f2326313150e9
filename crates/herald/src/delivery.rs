//! From configuration to delivery: resolves a domain's options (herald-conf) into [`DeliverySettings`], once per
//! domain and configuration (kept for at most [`SETTINGS_CACHE_LIMIT`] domains), loading each TLS identity and provider key once and sharing one provider-token cache
//! per key across every domain and connection that uses it (so a key's token is refreshed once, never per
//! connection). A reload that leaves a domain's credential files as they were yields the same TLS configuration
//! and token cache, so its connections can stay up. The validity dates of each client certificate are read when
//! its identity is loaded and kept with its TLS configuration, so that the doors can refuse, reading nothing, the
//! notifications of a domain whose certificate has expired or is not valid yet ([`SettingsResolver::admit`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use herald_apns::binary::BinaryFormat;
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use herald_apns::provider_token::{ProviderTokenCache, SigningKey};
use herald_conf::{
    ApnBinaryFormat, Config, DeliveryMethod, DomainSettings, Node, Opt, ScopeKind, TlsVerify,
};

use crate::outbound::hosts::HostBudgets;
use crate::outbound::settings::{ClientCertificate, DeliverySettings, RouteProtocol};
use crate::queue::message::{DEFAULT_BINDING, DEFAULT_BINDING_GROUP};
use crate::queue::retry::{MaxRetries, RetryPolicy};
use crate::queue::{ResolveError, SettingsResolver};

/// Default provider-token lifetime before a refresh (docs/apns-protocol.md#provider-tokens: between 20 and 60 minutes).
const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(60);
const MAX_WINDOW: usize = 100_000;
/// Settings kept built at most for this many (binding, domain) pairs, as the configuration's own cache of
/// resolved options: every domain a client names is resolved (an SMTP `RCPT` is enough), and with APNs options at
/// global scope every domain resolves. Past it the kept settings are dropped and built again on next use.
pub const SETTINGS_CACHE_LIMIT: usize = 100_000;

/// Why an APNs domain with an HTTP/2 route that names neither a provider key nor a client certificate is not
/// delivered: APNs would refuse every notification (`403 MissingProviderToken`). `herald check` reports it in the
/// same words.
pub(crate) const NO_CREDENTIALS: &str = "no credentials: set apn_key (token auth) or tls_certificate / tls_pkcs12 \
     (certificate auth); APNs refuses every notification sent without either";

/// The scopes that may hold `domain` stanzas applying to delivery from `binding`, innermost first: the binding in
/// its group, the binding at top level, its group, the global scope (herald-conf's fallback order).
fn stanza_containers<'a>(config: &'a Config, binding: &str) -> Vec<&'a Node> {
    let root = config.tree();
    let group = config
        .bindings()
        .into_iter()
        .find(|(_, b)| *b == binding)
        .and_then(|(g, _)| g);
    let g = group.and_then(|g| root.child(ScopeKind::BindingGroup, Some(g)));
    let gb = g.and_then(|g| g.child(ScopeKind::Binding, Some(binding)));
    let b = root.child(ScopeKind::Binding, Some(binding));
    [gb, b, g, Some(root)].into_iter().flatten().collect()
}

/// The `domain` stanzas (exact or regex) that apply to `domain` delivered from `binding`, innermost first.
fn domain_stanzas<'a>(config: &'a Config, binding: &str, domain: &str) -> Vec<&'a Node> {
    stanza_containers(config, binding)
        .into_iter()
        .flat_map(|c| c.matching_named(ScopeKind::Domain, domain))
        .collect()
}

/// Why `domain`, which no `domain` stanza on `binding`'s path names, is not delivered from `binding`: the other
/// bindings whose own stanzas deliver it with `apn` ([`ResolveError::OnlyInBindings`]), else it is unknown.
fn undeclared(config: &Config, binding: &str, domain: &str) -> ResolveError {
    let others: Vec<String> = config
        .bindings()
        .into_iter()
        .filter(|&(_, b)| b != binding && !domain_stanzas(config, b, domain).is_empty())
        .filter(|&(g, b)| {
            config.domain_settings(g, Some(b), domain).delivery_method == DeliveryMethod::Apn
        })
        .map(|(_, b)| b.to_owned())
        .collect();
    if others.is_empty() {
        ResolveError::UnknownDomain(domain.to_ascii_lowercase())
    } else {
        ResolveError::OnlyInBindings(others)
    }
}

/// Why (`binding`, `domain`), whose options give `method` instead of `apn`, is not delivered: no stanza for the
/// domain on the binding's path ([`undeclared`]), else the method in the configuration's words, marked as the
/// default when no scope on the path sets it (never the Rust name of the value).
fn not_apn(config: &Config, binding: &str, domain: &str, method: DeliveryMethod) -> ResolveError {
    let stanzas = domain_stanzas(config, binding, domain);
    if stanzas.is_empty() {
        return undeclared(config, binding, domain);
    }
    let set = stanzas
        .into_iter()
        .chain(stanza_containers(config, binding))
        .any(|n| n.get(Opt::DeliveryMethod.id()).is_some());
    let word = method.word().to_ascii_lowercase();
    ResolveError::NotApn(if set {
        word
    } else {
        format!("{word} (the default)")
    })
}

/// Why (`binding`, `domain`) with an HTTP/2 route and neither `apn_key` nor a client certificate is not delivered:
/// the credentials are missing ([`NO_CREDENTIALS`], a refusal the operator can fix, as an unreadable key file is);
/// or, when no stanza names the domain (APNs options at an outer scope without credentials), the domain is unknown.
fn no_credentials(config: &Config, binding: &str, domain: &str) -> ResolveError {
    if domain_stanzas(config, binding, domain).is_empty() {
        undeclared(config, binding, domain)
    } else {
        ResolveError::Credentials(NO_CREDENTIALS.to_owned())
    }
}

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

/// The client certificate of `identity`, loaded from `file` as `d` names it: its option, its file and its validity
/// dates. `None` when its leaf cannot be read (the TLS configuration, or `herald check`, reports such a certificate).
fn client_certificate(
    d: &DomainSettings,
    file: PathBuf,
    identity: &ClientIdentity,
) -> Option<ClientCertificate> {
    let info = identity.info().ok()?;
    Some(ClientCertificate {
        option: if d.tls_pkcs12.is_some() {
            "tls_pkcs12"
        } else {
            "tls_certificate"
        },
        file,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

/// The topic of the domain's client certificate (its UID, the bundle id; else its first listed topic), as channel
/// management takes it; `None` without a certificate, or when it cannot be read or names none (the TLS
/// configuration reports an unreadable certificate).
fn certificate_topic(d: &DomainSettings) -> Option<String> {
    let (_, identity) = load_identity(d)?;
    let info = identity.ok()?.info().ok()?;
    info.default_topic().ok().map(str::to_owned)
}

/// A provider-token key: its file, key id and team id.
type TokenKeyId = (PathBuf, String, String);

/// Resolves domains against a loaded configuration.
pub struct ConfigResolver {
    state: RwLock<ResolverState>,
    /// Provider-token caches by (key file, key id, team id), with a hash of the key file they were made from: a key
    /// replaced at the same path makes a new cache at the next reload.
    keys: Mutex<HashMap<TokenKeyId, (Option<u64>, ProviderTokenCache)>>,
    tls: Mutex<HashMap<TlsKey, TlsEntry>>,
    /// Host-wide connection budgets, kept across reloads (a reload changes their limits).
    hosts: HostBudgets,
    /// The most settings kept built ([`SETTINGS_CACHE_LIMIT`]).
    settings_limit: usize,
}

/// The configuration in force and the settings built from it, by (binding, domain) (built on first use, not per
/// notification), for at most [`SETTINGS_CACHE_LIMIT`] pairs.
struct ResolverState {
    config: Arc<Config>,
    generation: u64,
    settings: HashMap<(String, String), Resolved>,
}

/// Settings kept built, with the client certificate their TLS configuration presents.
#[derive(Clone)]
struct Resolved {
    settings: Arc<DeliverySettings>,
    certificate: Option<ClientCertificate>,
}

/// A TLS client configuration kept, with the client certificate it presents (`None` without one), read when its
/// identity was loaded.
#[derive(Clone)]
struct TlsEntry {
    config: Arc<rustls::ClientConfig>,
    certificate: Option<ClientCertificate>,
}

/// What a TLS client configuration is made of: the options, and the content of the files they name (so that a
/// renewed certificate at the same path makes a new configuration).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    pkcs12: Option<PathBuf>,
    pkcs12_password: Option<String>,
    verify: String,
    ca: Option<PathBuf>,
    h2: bool,
    contents: [Option<u64>; 4],
}

impl TlsKey {
    fn of(d: &DomainSettings, h2: bool) -> TlsKey {
        let content = |p: &Option<PathBuf>| p.as_deref().and_then(content_hash);
        TlsKey {
            certificate: d.tls_certificate.clone(),
            key: d.tls_key.clone(),
            pkcs12: d.tls_pkcs12.clone(),
            pkcs12_password: d.tls_pkcs12_password.clone(),
            verify: format!("{:?}", d.tls_verify),
            ca: d.tls_ca.clone(),
            h2,
            contents: [
                content(&d.tls_certificate),
                content(&d.tls_key),
                content(&d.tls_pkcs12),
                content(&d.tls_ca),
            ],
        }
    }

    /// Whether the files still hold what they held when this key was made.
    fn is_current(&self) -> bool {
        let content = |p: &Option<PathBuf>| p.as_deref().and_then(content_hash);
        self.contents
            == [
                content(&self.certificate),
                content(&self.key),
                content(&self.pkcs12),
                content(&self.ca),
            ]
    }
}

/// A hash of a file's bytes (`None` when it cannot be read: loading it reports why).
fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

impl ConfigResolver {
    pub fn new(config: Arc<Config>) -> Self {
        ConfigResolver {
            state: RwLock::new(ResolverState {
                config,
                generation: 0,
                settings: HashMap::new(),
            }),
            keys: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
            hosts: HostBudgets::new(),
            settings_limit: SETTINGS_CACHE_LIMIT,
        }
    }

    /// A resolver keeping at most `limit` settings built (tests of the bound).
    #[cfg(test)]
    fn with_settings_limit(config: Arc<Config>, limit: usize) -> Self {
        ConfigResolver {
            settings_limit: limit,
            ..ConfigResolver::new(config)
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ResolverState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.read().config.clone()
    }

    /// Puts a new configuration in force (after a reload). Settings are built again on next use; credential
    /// files are read again, and a TLS configuration is reused only when its files hold what they held, so a
    /// renewed certificate or key takes effect; provider-token caches of unchanged keys are kept (a new cache
    /// would mint a token early).
    pub fn replace(&self, config: Arc<Config>) {
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.config = config;
            state.generation += 1;
            state.settings.clear();
        }
        self.tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.is_current());
    }

    fn token_cache(&self, d: &DomainSettings) -> Result<Option<ProviderTokenCache>, ResolveError> {
        self.token_cache_inner(d).map_err(ResolveError::Credentials)
    }

    fn token_cache_inner(&self, d: &DomainSettings) -> Result<Option<ProviderTokenCache>, String> {
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
        let content = content_hash(path);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let cache_key = (path.clone(), key_id.clone(), team_id.clone());
        if let Some((made_from, cache)) = keys.get(&cache_key)
            && *made_from == content
        {
            return Ok(Some(cache.clone()));
        }
        let key = SigningKey::from_p8_file(path, &key_id, &team_id)
            .map_err(|e| format!("apn_key {}: {e}", path.display()))?;
        let cache = ProviderTokenCache::new(key, TOKEN_REFRESH)
            .map_err(|e| format!("apn_key {}: signing a provider token: {e}", path.display()))?;
        keys.insert(cache_key, (content, cache.clone()));
        Ok(Some(cache))
    }

    fn tls_config(&self, d: &DomainSettings, h2: bool) -> Result<TlsEntry, ResolveError> {
        self.tls_config_inner(d, h2)
            .map_err(ResolveError::Credentials)
    }

    /// The TLS configuration of `d`'s options, made once per options and file contents; the client identity is
    /// loaded (and its certificate's dates read) only then.
    fn tls_config_inner(&self, d: &DomainSettings, h2: bool) -> Result<TlsEntry, String> {
        let key = TlsKey::of(d, h2);
        let mut cache = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let (identity, certificate) = match load_identity(d) {
            None => (None, None),
            Some((file, identity)) => {
                let identity = identity?;
                let certificate = client_certificate(d, file, &identity);
                (Some(identity), certificate)
            }
        };
        let roots = match (d.tls_verify, &d.tls_ca) {
            (TlsVerify::No, _) => RootSource::NoVerify,
            // The chain only: a route by IP address or through a proxy reaches a certificate for another name.
            (TlsVerify::Ca, ca) => RootSource::ChainOnly(ca.clone()),
            (TlsVerify::Host, Some(ca)) => RootSource::CaFile(ca.clone()),
            (TlsVerify::Host, None) => RootSource::System,
        };
        let config = client_config(identity.as_ref(), roots, h2).map_err(|e| e.to_string())?;
        let entry = TlsEntry {
            config,
            certificate,
        };
        cache.insert(key, entry.clone());
        Ok(entry)
    }

    /// Builds the settings of one domain (default binding).
    pub fn build(&self, domain: &str) -> Result<DeliverySettings, ResolveError> {
        self.build_with(&self.config(), DEFAULT_BINDING, domain)
            .map(|(settings, _)| settings)
    }

    /// Builds the settings of one domain delivered from `binding`: every option resolved with the full fallback
    /// (binding_group::binding::domain … global), the `host` stanza of the route's host giving the host-wide budget,
    /// and the binding's `bind_address` as the source address. Returns the client certificate the settings' TLS
    /// configuration presents with them.
    fn build_with(
        &self,
        config: &Config,
        binding: &str,
        domain: &str,
    ) -> Result<(DeliverySettings, Option<ClientCertificate>), ResolveError> {
        if !config.has_binding(binding) {
            return Err(ResolveError::UnknownBinding(binding.to_owned()));
        }
        // `default` is a binding like the others: a `binding "default"` stanza applies to notifications that
        // name no binding.
        let d = config.domain_settings(None, Some(binding), domain);
        if d.delivery_method != DeliveryMethod::Apn {
            return Err(not_apn(config, binding, domain, d.delivery_method));
        }
        let route = d.routes.first().ok_or(ResolveError::NoRoutes)?;
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
        // Certificate authentication is the TLS client identity: without it and without a key, APNs answers every
        // notification `403 MissingProviderToken`. Refused here, so the doors refuse them and a reload names it.
        if h2 && auth.is_none() && d.tls_certificate.is_none() && d.tls_pkcs12.is_none() {
            return Err(no_credentials(config, binding, domain));
        }
        if !h2 && d.tls_certificate.is_none() && d.tls_pkcs12.is_none() {
            return Err(ResolveError::BinaryNeedsCertificate);
        }
        let TlsEntry {
            config: tls,
            certificate,
        } = self.tls_config(&d, h2)?;
        let certificate_topic = match (&d.apn_topic, h2) {
            (None, true) => certificate_topic(&d).map(Arc::from),
            _ => None,
        };
        let retry = retry_policy(&d);
        // A negative cap is none; 0, which would stop delivery, is taken as 1 (`herald check` warns about it).
        let limit = |n: i64| {
            if n < 0 {
                usize::MAX
            } else {
                usize::try_from(n).unwrap_or(usize::MAX).max(1)
            }
        };
        // A host stanza for the route's host caps every connection to the host together, over every pool
        // routed there (a negative cap is none).
        let host_budget = config
            .host_connection_cap(d.binding_group.as_deref(), Some(binding), &route.host)
            .filter(|cap| cap.limit >= 0)
            .map(|cap| self.hosts.budget(&cap.scope, &route.host, limit(cap.limit)));
        let max_connections = limit(d.max_outbound_connections);
        let settings = DeliverySettings {
            domain: Arc::from(domain),
            binding_group: Arc::from(d.binding_group.as_deref().unwrap_or(DEFAULT_BINDING_GROUP)),
            binding: Arc::from(binding),
            protocol,
            endpoint: Endpoint::new(route.host.clone(), route.port).bound_to(d.bind_address),
            tls,
            auth,
            default_topic: d.apn_topic.as_deref().map(Arc::from),
            certificate_topic,
            max_connections,
            host_budget,
            idle_timeout: (!d.idle_timeout.is_zero()).then_some(d.idle_timeout),
            response_timeout: d.delivery_response_timeout.max(Duration::from_millis(1)),
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: KEEPALIVE,
            mx_failures_to_delay: d.mx_failures_to_delay,
            retry,
            apn_expiry: d.apn_expiry,
            max_window: MAX_WINDOW,
        };
        Ok((settings, certificate))
    }

    /// Refuses new notifications with `settings` when the client certificate their TLS configuration presents is
    /// outside its validity dates at `now`. The certificate is found with the settings kept for their (binding,
    /// domain), else (a reload or the bound on settings kept dropped them while a door held them) with the TLS
    /// configurations kept; settings whose TLS configuration is in neither (a reload replaced its files) are let
    /// through, as the queue delivers with them anyway.
    fn admit_at(&self, settings: &DeliverySettings, now: SystemTime) -> Result<(), ResolveError> {
        let check = |c: &Option<ClientCertificate>| {
            c.as_ref()
                .map_or(Ok(()), |c| c.check(now).map_err(ResolveError::from))
        };
        {
            let state = self.read();
            let key = (settings.binding.to_string(), settings.domain.to_string());
            if let Some(kept) = state.settings.get(&key)
                && Arc::ptr_eq(&kept.settings.tls, &settings.tls)
            {
                return check(&kept.certificate);
            }
        }
        let tls = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        tls.values()
            .find(|e| Arc::ptr_eq(&e.config, &settings.tls))
            .map_or(Ok(()), |e| check(&e.certificate))
    }
}

/// What a call to APNs outside the delivery queue (channel management) needs of a domain: its options under the
/// `default` binding, a TLS client configuration for HTTP/2 with the domain's client identity (whatever protocol
/// its route speaks), and its provider-token cache when it has `apn_key`.
pub struct Http2Credentials {
    pub settings: Arc<DomainSettings>,
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: Option<ProviderTokenCache>,
}

impl ConfigResolver {
    /// The domain's HTTP/2 credentials under the configuration in force (shared with delivery: the same TLS
    /// configuration and token cache when the files did not change). Reads and signs: call it off async threads.
    pub fn http2_credentials(&self, domain: &str) -> Result<Http2Credentials, ResolveError> {
        let config = self.config();
        let d = config.domain_settings(None, Some(DEFAULT_BINDING), domain);
        if d.delivery_method != DeliveryMethod::Apn {
            return Err(not_apn(&config, DEFAULT_BINDING, domain, d.delivery_method));
        }
        let auth = self.token_cache(&d)?;
        let tls = self.tls_config(&d, true)?.config;
        Ok(Http2Credentials {
            settings: d,
            tls,
            auth,
        })
    }
}

impl ConfigResolver {
    /// The settings of `domain` from every declared binding that reaches APNs differently (another route, source
    /// address or credentials; see [`DeliverySettings::same_route_and_credentials`]), the `default` binding's
    /// first; bindings that cannot deliver the domain are left out. What `herald check --connect` tries and the
    /// feedback poller polls.
    pub fn distinct_bindings(&self, domain: &str) -> Vec<Arc<DeliverySettings>> {
        let mut out: Vec<Arc<DeliverySettings>> = Vec::new();
        for binding in SettingsResolver::bindings(self) {
            let Ok(settings) = self.resolve_binding(&binding, domain) else {
                continue;
            };
            if !out.iter().any(|s| s.same_route_and_credentials(&settings)) {
                out.push(settings);
            }
        }
        out
    }
}

impl SettingsResolver for ConfigResolver {
    fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
        self.resolve_binding(DEFAULT_BINDING, domain)
    }

    fn bindings(&self) -> Vec<String> {
        self.config()
            .bindings()
            .into_iter()
            .map(|(_, b)| b.to_owned())
            .collect()
    }

    fn cached(&self, binding: &str, domain: &str) -> Option<Arc<DeliverySettings>> {
        self.read()
            .settings
            .get(&(binding.to_owned(), domain.to_owned()))
            .map(|kept| kept.settings.clone())
    }

    fn admit(&self, settings: &DeliverySettings, now: SystemTime) -> Result<(), ResolveError> {
        self.admit_at(settings, now)
    }

    /// One look at the settings kept, which hold their client certificate with them.
    fn cached_admitted(
        &self,
        binding: &str,
        domain: &str,
        now: SystemTime,
    ) -> Option<Result<Arc<DeliverySettings>, ResolveError>> {
        let state = self.read();
        let kept = state
            .settings
            .get(&(binding.to_owned(), domain.to_owned()))?;
        Some(match &kept.certificate {
            Some(c) => c
                .check(now)
                .map(|()| kept.settings.clone())
                .map_err(ResolveError::from),
            None => Ok(kept.settings.clone()),
        })
    }

    fn forget(&self, binding: &str, domain: &str) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state
            .settings
            .remove(&(binding.to_owned(), domain.to_owned()));
        state
            .config
            .forget_domain_settings(None, Some(binding), domain);
    }

    /// The settings of (binding, domain) under the configuration in force, built on first use and kept for
    /// [`SETTINGS_CACHE_LIMIT`] pairs: when that many are kept, they are dropped for the new one (the busy ones are
    /// built again on next use, with the same TLS configuration and token cache). Refusals are not kept: an
    /// unknown domain costs a lookup each time.
    fn resolve_binding(
        &self,
        binding: &str,
        domain: &str,
    ) -> Result<Arc<DeliverySettings>, ResolveError> {
        let key = (binding.to_owned(), domain.to_owned());
        let (config, generation) = {
            let state = self.read();
            if let Some(kept) = state.settings.get(&key) {
                return Ok(kept.settings.clone());
            }
            (state.config.clone(), state.generation)
        };
        let (settings, certificate) = self.build_with(&config, binding, domain)?;
        let settings = Arc::new(settings);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Built under a configuration a reload has since replaced: use it once, do not keep it.
        if state.generation == generation {
            if state.settings.len() >= self.settings_limit && !state.settings.contains_key(&key) {
                state.settings.clear();
            }
            let kept = Resolved {
                settings: settings.clone(),
                certificate,
            };
            state.settings.insert(key, kept);
        }
        Ok(settings)
    }
}

/// The retry schedule a domain's settings give (docs/momentum-compat.md#retries).
pub(crate) fn retry_policy(d: &DomainSettings) -> RetryPolicy {
    RetryPolicy {
        retry_interval: d.retry.retry_interval,
        max_retry_interval: d.retry.max_retry_interval,
        max_retries: match d.retry.max_retries {
            herald_conf::MaxRetries::Auto => MaxRetries::Auto,
            herald_conf::MaxRetries::None => MaxRetries::Unlimited,
            herald_conf::MaxRetries::Count(n) => MaxRetries::Limit(n),
        },
        message_expiration: d.retry.message_expiration,
        never_attempt_expired: d.retry.never_attempt_expired_messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::settings::OutsideValidity;
    use herald_sim::Pki;

    const TOPIC: &str = "com.example.resolver";

    fn config(pki: &Pki, port: u16, max: u32) -> Arc<Config> {
        let m = &pki.manifest;
        let client = &m.clients[TOPIC]["universal"];
        let text = format!(
            r#"
domain "cert.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  max_outbound_connections = {max}
}}
domain "token.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  max_outbound_connections = {max}
}}
"#,
            ca = m.ca_cert.display(),
            cert = client.cert.display(),
            key = client.key.display(),
            p8 = m.token_key.p8.display(),
            kid = m.token_key.key_id,
            tid = m.token_key.team_id,
        );
        Arc::new(Config::parse_str("herald.conf", &text).unwrap())
    }

    /// `max_outbound_connections = 0` (no meaning in Momentum; `herald check` warns) delivers over one connection
    /// instead of none.
    #[test]
    fn zero_outbound_connections_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let zero = config(&pki, 2195, 0);
        assert!(
            zero.warnings()
                .iter()
                .any(|w| w.message.contains("`max_outbound_connections = 0`")),
            "{:?}",
            zero.warnings()
        );
        let resolver = ConfigResolver::new(zero);
        assert_eq!(resolver.resolve("cert.example").unwrap().max_connections, 1);
        assert_eq!(
            resolver.resolve("token.example").unwrap().max_connections,
            1
        );
    }

    #[test]
    fn settings_are_built_once_per_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        let a = resolver.resolve("cert.example").unwrap();
        let b = resolver.resolve("cert.example").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(resolver.resolve("unknown.example").is_err());
        resolver.replace(config(&pki, 2195, 5));
        let c = resolver.resolve("cert.example").unwrap();
        assert_eq!(c.max_connections, 5, "a reload builds the settings again");
        // A retired queue's settings are forgotten (with the configuration's lookup), and built again when the
        // queue starts again, sharing the TLS configuration: the same connections.
        assert!(resolver.cached(DEFAULT_BINDING, "cert.example").is_some());
        let domain_settings =
            resolver
                .config()
                .domain_settings(None, Some(DEFAULT_BINDING), "cert.example");
        resolver.forget(DEFAULT_BINDING, "cert.example");
        assert!(resolver.cached(DEFAULT_BINDING, "cert.example").is_none());
        let again = resolver
            .config()
            .domain_settings(None, Some(DEFAULT_BINDING), "cert.example");
        assert!(!Arc::ptr_eq(&domain_settings, &again));
        let d = resolver.resolve("cert.example").unwrap();
        assert!(!Arc::ptr_eq(&c, &d));
        assert!(c.same_connections(&d));
    }

    /// Every domain resolves when APNs is configured at global scope, and clients name any domain they like: the
    /// settings kept built stay within their bound, and a domain resolved past it is kept like any other.
    #[test]
    fn the_settings_kept_stay_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let m = &pki.manifest;
        let text = format!(
            r#"
delivery_method = apn
routes = ( "https://127.0.0.1:2195" )
tls_verify = ca
tls_ca = "{ca}"
apn_key = "{p8}"
apn_key_id = "{kid}"
apn_team_id = "{tid}"
apn_topic = "{TOPIC}"
"#,
            ca = m.ca_cert.display(),
            p8 = m.token_key.p8.display(),
            kid = m.token_key.key_id,
            tid = m.token_key.team_id,
        );
        let config = Arc::new(Config::parse_str("herald.conf", &text).unwrap());
        let resolver = ConfigResolver::with_settings_limit(config, 8);
        for i in 0..50 {
            let domain = format!("app{i}.example");
            let settings = resolver.resolve(&domain).unwrap();
            assert_eq!(&*settings.domain, domain);
            assert!(resolver.read().settings.len() <= 8, "{i}");
            assert!(resolver.cached(DEFAULT_BINDING, &domain).is_some(), "{i}");
        }
    }

    /// Each reason a (binding, domain) cannot deliver is its own variant, for callers to match on.
    #[test]
    fn resolve_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        assert_eq!(
            resolver
                .resolve_binding("nowhere", "cert.example")
                .unwrap_err(),
            ResolveError::UnknownBinding("nowhere".into())
        );
        let text = r#"
domain "smtp.example" { delivery_method = smtp }
domain "bare.example" { delivery_method = apn  routes = ( "apn://127.0.0.1?port=2195" ) }
"#;
        resolver.replace(Arc::new(Config::parse_str("herald.conf", text).unwrap()));
        assert!(matches!(
            resolver.resolve("smtp.example"),
            Err(ResolveError::NotApn(_))
        ));
        assert_eq!(
            resolver.resolve("bare.example").unwrap_err(),
            ResolveError::BinaryNeedsCertificate
        );
    }

    /// An APNs domain with an HTTP/2 route and neither `apn_key` nor a client certificate is refused as one whose
    /// credentials cannot be used (APNs would answer every notification `403 MissingProviderToken`); a domain no
    /// stanza names is unknown, even where APNs options at global scope name no credentials; one declared only in a
    /// binding names that binding; another delivery method is named by its configuration word.
    #[test]
    fn undeliverable_domains_say_why_in_the_configurations_words() {
        let text = r#"
routes = ( "https://127.0.0.1:2195" )
domain "z.example" { delivery_method = apn  apn_topic = "com.example.z" }
domain "smtp.example" { delivery_method = smtp }
domain "plain.example" { max_outbound_connections = 2 }
binding "b1" { domain "inb.example" { delivery_method = apn  apn_key = "/k.p8" } }
binding_group "g" { binding "b2" { } domain "grp.example" { delivery_method = apn } }
"#;
        let resolver =
            ConfigResolver::new(Arc::new(Config::parse_str("herald.conf", text).unwrap()));
        assert_eq!(
            resolver.resolve("z.example").unwrap_err(),
            ResolveError::Credentials(NO_CREDENTIALS.into())
        );
        assert_eq!(
            resolver.resolve("Tokne.example").unwrap_err(),
            ResolveError::UnknownDomain("tokne.example".into())
        );
        assert_eq!(
            resolver.resolve("inb.example").unwrap_err(),
            ResolveError::OnlyInBindings(vec!["b1".into()])
        );
        assert_eq!(
            resolver.resolve("grp.example").unwrap_err(),
            ResolveError::OnlyInBindings(vec!["b2".into()])
        );
        assert_eq!(
            resolver.resolve("smtp.example").unwrap_err(),
            ResolveError::NotApn("smtp".into())
        );
        assert_eq!(
            resolver.resolve("plain.example").unwrap_err(),
            ResolveError::NotApn("esmtp (the default)".into())
        );
        // From the binding that declares it, the domain resolves as far as its credentials.
        assert!(matches!(
            resolver.resolve_binding("b1", "inb.example"),
            Err(ResolveError::Credentials(e)) if e.starts_with("apn_key")
        ));
        assert_eq!(
            resolver.resolve_binding("b1", "z.example").unwrap_err(),
            ResolveError::Credentials(NO_CREDENTIALS.into())
        );

        // APNs options at global scope deliver every domain: without credentials there, a domain no stanza names
        // is unknown, not one whose credentials are missing.
        let text = "delivery_method = apn\nroutes = ( \"https://127.0.0.1:2195\" )\n\
                    domain \"z.example\" { apn_topic = \"com.example.z\" }\n";
        resolver.replace(Arc::new(Config::parse_str("herald.conf", text).unwrap()));
        assert_eq!(
            resolver.resolve("other.example").unwrap_err(),
            ResolveError::UnknownDomain("other.example".into())
        );
        assert_eq!(
            resolver.resolve("z.example").unwrap_err(),
            ResolveError::Credentials(NO_CREDENTIALS.into())
        );
        for e in [
            ResolveError::NotApn("smtp".into()),
            ResolveError::UnknownDomain("x".into()),
            ResolveError::OnlyInBindings(vec!["b1".into(), "b2".into()]),
        ] {
            assert!(!e.to_string().contains("Smtp"), "{e}");
        }
        assert_eq!(
            ResolveError::OnlyInBindings(vec!["b1".into(), "b2".into()]).to_string(),
            "it is declared only for bindings \"b1\", \"b2\": name one of them with the notification (REST \
             \"binding\" field, MCMT X-Binding header)"
        );
    }

    /// A reload that leaves the route and the credential files alone keeps the connections
    /// (docs/architecture.md#configuration): same TLS configuration, same provider-token cache.
    #[test]
    fn unchanged_credentials_keep_their_connections_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        let before = resolver.resolve("cert.example").unwrap();
        let token_before = resolver.resolve("token.example").unwrap();
        resolver.replace(config(&pki, 2195, 4));
        let after = resolver.resolve("cert.example").unwrap();
        let token_after = resolver.resolve("token.example").unwrap();
        assert!(before.same_connections(&after));
        assert!(token_before.same_connections(&token_after));
        assert_eq!(after.max_connections, 4);

        // Another route: new connections.
        resolver.replace(config(&pki, 2196, 4));
        assert!(!after.same_connections(&resolver.resolve("cert.example").unwrap()));
    }

    /// The doors hold settings kept from before against the time of each notification: a certificate domain is
    /// admitted within its certificate's dates and refused outside them (naming the option, the file and the
    /// date), also once its settings are no longer kept; a domain with token authentication alone is admitted at
    /// any time.
    #[test]
    fn settings_are_admitted_only_within_their_certificates_dates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        let cert = resolver.resolve("cert.example").unwrap();
        let now = SystemTime::now();
        assert_eq!(resolver.admit(&cert, now), Ok(()));
        // The test PKI's certificates are valid from a day ago for ten years.
        let later = now + Duration::from_secs(11 * 365 * 24 * 3600);
        let earlier = now - Duration::from_secs(2 * 24 * 3600);
        let file = pki.manifest.clients[TOPIC]["universal"].cert.clone();
        let expired = resolver.admit(&cert, later).unwrap_err();
        assert!(
            matches!(&expired, ResolveError::Certificate(e) if matches!(&**e, OutsideValidity::Expired { option: "tls_certificate", file: f, .. } if *f == file)),
            "{expired:?}"
        );
        let text = expired.to_string();
        assert!(
            text.starts_with(&format!(
                "tls_certificate {}: the client certificate expired at ",
                file.display()
            )) && text.contains(" UTC (notAfter)"),
            "{text}"
        );
        let early = resolver.admit(&cert, earlier).unwrap_err();
        assert!(
            early
                .to_string()
                .contains("the client certificate is not valid before "),
            "{early}"
        );
        // No longer kept (its queue retired): the certificate is still known by its TLS configuration.
        resolver.forget(DEFAULT_BINDING, "cert.example");
        assert_eq!(resolver.admit(&cert, later), Err(expired));

        let token = resolver.resolve("token.example").unwrap();
        assert_eq!(resolver.admit(&token, later), Ok(()));
        assert_eq!(resolver.admit(&token, earlier), Ok(()));
    }

    /// A certificate renewed in place (same path, new content) takes effect at the next reload.
    #[test]
    fn a_renewed_certificate_file_makes_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        let before = resolver.resolve("cert.example").unwrap();
        let other = tempfile::tempdir().unwrap();
        let renewed = Pki::generate(other.path(), &[TOPIC.to_string()]).unwrap();
        let (old, new) = (
            &pki.manifest.clients[TOPIC]["universal"],
            &renewed.manifest.clients[TOPIC]["universal"],
        );
        std::fs::copy(&new.cert, &old.cert).unwrap();
        std::fs::copy(&new.key, &old.key).unwrap();
        resolver.replace(config(&pki, 2195, 2));
        let after = resolver.resolve("cert.example").unwrap();
        assert!(!before.same_connections(&after));
        assert!(!Arc::ptr_eq(&before.tls, &after.tls));
    }

    /// A provider-token key replaced in place (same path, key id and team, new content) signs from the next reload
    /// on, with new connections; an unchanged one keeps its cache (a new cache would mint a token early).
    #[test]
    fn a_replaced_token_key_file_makes_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &[TOPIC.to_string()]).unwrap();
        let resolver = ConfigResolver::new(config(&pki, 2195, 2));
        let before = resolver.resolve("token.example").unwrap();
        resolver.replace(config(&pki, 2195, 2));
        let unchanged = resolver.resolve("token.example").unwrap();
        assert!(before.same_connections(&unchanged));
        let other = tempfile::tempdir().unwrap();
        let renewed = Pki::generate(other.path(), &[TOPIC.to_string()]).unwrap();
        std::fs::copy(&renewed.manifest.token_key.p8, &pki.manifest.token_key.p8).unwrap();
        resolver.replace(config(&pki, 2195, 2));
        let after = resolver.resolve("token.example").unwrap();
        assert!(!before.same_connections(&after));
    }
}
