//! Typed views of the configuration: per-domain delivery settings (every delivery option resolved once, with
//! fallback), listeners with their peers and access lists, the apn module, loggers and the spool. These are what the
//! rest of herald reads; nothing outside this crate needs to evaluate options by name.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::{
    eval::{Candidates, covers, first_value, listener_nodes},
    net::{Cidr, ListenAddr},
    options::Opt,
    scopes::ScopeKind,
    tree::Node,
    value::{MaxRetries, Route, Value},
};

pub use crate::options::{
    ApnBinaryFormat, DeliveryMethod, LogFormat, McmtReception, SpoolBackend, TlsMode, TlsVerify,
};

pub(crate) fn log_format(root: &Node) -> LogFormat {
    Resolver::new(vec![root])
        .word_as(Opt::LogFormat, LogFormat::from_word)
        .unwrap_or(LogFormat::Text)
}

/// The retry schedule of a domain (docs/momentum-compat.md#retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
    pub max_retries: MaxRetries,
    pub message_expiration: Duration,
    pub never_attempt_expired_messages: bool,
}

/// Everything that governs delivery to one domain from one binding, resolved with fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    pub binding_group: Option<String>,
    pub binding: Option<String>,
    pub domain: String,
    pub delivery_method: DeliveryMethod,
    pub routes: Vec<Route>,
    pub idle_timeout: Duration,
    pub delivery_response_timeout: Duration,
    /// -1 means unlimited.
    pub max_outbound_connections: i64,
    pub tls: TlsMode,
    pub tls_verify: TlsVerify,
    pub tls_ca: Option<PathBuf>,
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ciphers: Option<String>,
    pub tls_pkcs12: Option<PathBuf>,
    pub tls_pkcs12_password: Option<String>,
    pub mx_failures_to_delay: u32,
    pub apn_expiry: Duration,
    pub apn_topic: Option<String>,
    pub apn_key: Option<PathBuf>,
    pub apn_key_id: Option<String>,
    pub apn_team_id: Option<String>,
    pub apn_binary_format: ApnBinaryFormat,
    /// `None` when polling is off (0).
    pub apn_feedback_interval: Option<Duration>,
    pub retry: RetryPolicy,
    pub generate_bounces: bool,
    pub bind_address: Option<IpAddr>,
}

/// Reads typed values out of a candidate list.
struct Resolver<'a> {
    c: Candidates<'a>,
}

impl<'a> Resolver<'a> {
    fn new(nodes: Vec<&'a Node>) -> Self {
        Resolver {
            c: Candidates { nodes, host: false },
        }
    }
    fn value(&self, opt: Opt) -> &'a Value {
        first_value(&self.c, opt.id())
    }
    fn int(&self, opt: Opt) -> i64 {
        self.value(opt).as_int().unwrap_or(0)
    }
    fn u32(&self, opt: Opt) -> u32 {
        u32::try_from(self.int(opt)).unwrap_or(u32::MAX)
    }
    fn secs(&self, opt: Opt) -> Duration {
        Duration::from_secs(u64::try_from(self.int(opt)).unwrap_or(0))
    }
    fn millis(&self, opt: Opt) -> Duration {
        Duration::from_millis(u64::try_from(self.int(opt)).unwrap_or(0))
    }
    fn bool(&self, opt: Opt) -> bool {
        self.value(opt).as_bool().unwrap_or(false)
    }
    fn word(&self, opt: Opt) -> &'a str {
        self.value(opt).as_str().unwrap_or("")
    }
    /// An enum-valued option as its Rust type; `None` when unset.
    fn word_as<T>(&self, opt: Opt, from_word: fn(&str) -> Option<T>) -> Option<T> {
        from_word(self.word(opt))
    }
    fn string(&self, opt: Opt) -> Option<String> {
        self.value(opt).as_str().map(str::to_string)
    }
    fn path(&self, opt: Opt) -> Option<PathBuf> {
        self.value(opt).as_str().map(PathBuf::from)
    }
    fn mode(&self, opt: Opt) -> u32 {
        match self.value(opt) {
            Value::Mode(m) => *m,
            _ => 0o644,
        }
    }
    fn cidrs(&self, opt: Opt) -> Vec<Cidr> {
        self.value(opt).as_cidrs().to_vec()
    }
}

impl DomainSettings {
    pub(crate) fn resolve(
        nodes: Vec<&Node>,
        binding_group: Option<&str>,
        binding: Option<&str>,
        domain: &str,
    ) -> DomainSettings {
        let r = Resolver::new(nodes);
        let delivery_method = r
            .word_as(Opt::DeliveryMethod, DeliveryMethod::from_word)
            .unwrap_or(DeliveryMethod::Esmtp);
        let tls = r
            .word_as(Opt::Tls, TlsMode::from_word)
            .unwrap_or(TlsMode::No);
        let tls_verify = r
            .word_as(Opt::TlsVerify, TlsVerify::from_word)
            .unwrap_or(TlsVerify::Host);
        let feedback = r.secs(Opt::ApnFeedbackInterval);
        DomainSettings {
            binding_group: binding_group.map(str::to_string),
            binding: binding.map(str::to_string),
            domain: domain.to_string(),
            delivery_method,
            routes: r.value(Opt::Routes).as_routes().to_vec(),
            idle_timeout: r.secs(Opt::IdleTimeout),
            delivery_response_timeout: r.millis(Opt::DeliveryResponseTimeout),
            max_outbound_connections: r.int(Opt::MaxOutboundConnections),
            tls,
            tls_verify,
            tls_ca: r.path(Opt::TlsCa),
            tls_certificate: r.path(Opt::TlsCertificate),
            tls_key: r.path(Opt::TlsKey),
            tls_ciphers: r.string(Opt::TlsCiphers),
            tls_pkcs12: r.path(Opt::TlsPkcs12),
            tls_pkcs12_password: r.string(Opt::TlsPkcs12Password),
            mx_failures_to_delay: r.u32(Opt::MxFailuresToDelay),
            apn_expiry: r.secs(Opt::ApnExpiry),
            apn_topic: r.string(Opt::ApnTopic),
            apn_key: r.path(Opt::ApnKey),
            apn_key_id: r.string(Opt::ApnKeyId),
            apn_team_id: r.string(Opt::ApnTeamId),
            apn_binary_format: r
                .word_as(Opt::ApnBinaryFormat, ApnBinaryFormat::from_word)
                .unwrap_or(ApnBinaryFormat::Frame),
            apn_feedback_interval: (!feedback.is_zero()).then_some(feedback),
            retry: RetryPolicy {
                retry_interval: r.secs(Opt::RetryInterval),
                max_retry_interval: r.secs(Opt::MaxRetryInterval),
                max_retries: match r.value(Opt::MaxRetries) {
                    Value::MaxRetries(m) => *m,
                    _ => MaxRetries::Auto,
                },
                message_expiration: r.secs(Opt::MessageExpiration),
                never_attempt_expired_messages: r.bool(Opt::NeverAttemptExpiredMessages),
            },
            generate_bounces: r.bool(Opt::GenerateBounces),
            bind_address: r
                .value(Opt::BindAddress)
                .as_str()
                .and_then(|s| s.parse().ok()),
        }
    }
}

/// `always_allow` / `always_deny`: an address matching `always_allow` is accepted; otherwise one matching
/// `always_deny` is refused; anything else is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Acl {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || !self.deny.iter().any(|c| c.contains(ip))
    }
}

/// The kinds of listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Esmtp,
    Http,
    Control,
    Ecstream,
}

impl ListenerKind {
    pub(crate) fn from_scope(kind: ScopeKind) -> Option<ListenerKind> {
        Some(match kind {
            ScopeKind::EsmtpListener => ListenerKind::Esmtp,
            ScopeKind::HttpListener => ListenerKind::Http,
            ScopeKind::ControlListener => ListenerKind::Control,
            ScopeKind::EcstreamListener => ListenerKind::Ecstream,
            _ => return None,
        })
    }
}

/// What applies to clients matching one `peer` stanza, when it is the most specific that does (resolved peer →
/// listen::peer → listen → listener::peer → listener, the other container's peer being its most specific one that
/// holds this block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    pub cidr: Cidr,
    pub mcmt_reception: McmtReception,
    pub acl: Acl,
    pub api_keys: Vec<String>,
    /// `dashboard_admin_keys`: the keys with the dashboard's admin right.
    pub admin_keys: Vec<String>,
    /// `auth_failure_limit`: wrong keys a client may send within a minute before it is refused (0 = never).
    pub auth_failure_limit: u32,
}

/// One `listen` stanza of a listener, resolved (listen → listener → default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    pub kind: ListenerKind,
    /// The address as written, e.g. `":25"`.
    pub address: String,
    pub addr: ListenAddr,
    /// `enable` of both the listener and the listen stanza.
    pub enabled: bool,
    pub mcmt_reception: McmtReception,
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub acl: Acl,
    /// `api_key` and `api_keys` together; empty means no key is required.
    pub api_keys: Vec<String>,
    /// `dashboard_admin_keys`: which keys have the web dashboard's admin right.
    pub admin_keys: Vec<String>,
    /// `dashboard_hosts`: the host names (besides IP literals and `localhost`) under which a browser may read the
    /// dashboard by its address, without a key.
    pub dashboard_hosts: Vec<String>,
    /// `auth_failure_limit`: wrong keys a client may send within a minute before it is refused (0 = never).
    pub auth_failure_limit: u32,
    pub max_request_size: Option<u64>,
    /// `http_services`: what an HTTP listener serves.
    pub http_services: HttpServices,
    pub file_mode: u32,
    /// Peer stanzas of the listen stanza, then of the listener.
    pub peers: Vec<PeerSettings>,
}

/// What an HTTP listener serves (`http_services`); `/healthz` and `/readyz` are always served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpServices {
    /// Momentum's `/v1.0/inject`.
    pub inject: bool,
    /// The native batch API `/api/v1/push`.
    pub push: bool,
    /// The invalid-token list `/api/v1/tokens/invalid`.
    pub tokens: bool,
    /// Prometheus `/metrics`.
    pub metrics: bool,
    /// The operators' web dashboard under `/dashboard/`.
    pub dashboard: bool,
}

impl Default for HttpServices {
    /// What `http_services` defaults to: everything but the dashboard.
    fn default() -> Self {
        HttpServices {
            inject: true,
            push: true,
            tokens: true,
            metrics: true,
            dashboard: false,
        }
    }
}

impl HttpServices {
    /// The services a list names (words as `http_services` accepts them).
    pub fn from_words<S: AsRef<str>>(words: &[S]) -> HttpServices {
        let has = |w: &str| words.iter().any(|x| x.as_ref().eq_ignore_ascii_case(w));
        HttpServices {
            inject: has("inject"),
            push: has("push"),
            tokens: has("tokens"),
            metrics: has("metrics"),
            dashboard: has("dashboard"),
        }
    }
}

impl ListenerSettings {
    /// The most specific peer stanza whose CIDR contains `ip` (see [`Cidr::specificity`]).
    pub fn peer_for(&self, ip: IpAddr) -> Option<&PeerSettings> {
        self.peers
            .iter()
            .filter(|p| p.cidr.contains(ip))
            .max_by_key(|p| p.cidr.specificity())
    }

    /// Whether a client at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.peer_for(ip)
            .map(|p| &p.acl)
            .unwrap_or(&self.acl)
            .permits(ip)
    }

    /// `mcmt_reception` for a client at `ip`.
    pub fn mcmt_reception_for(&self, ip: IpAddr) -> McmtReception {
        self.peer_for(ip)
            .map(|p| p.mcmt_reception)
            .unwrap_or(self.mcmt_reception)
    }

    /// The keys with the dashboard's admin right for a client at `ip`.
    pub fn admin_keys_for(&self, ip: IpAddr) -> &[String] {
        self.peer_for(ip)
            .map(|p| p.admin_keys.as_slice())
            .unwrap_or(&self.admin_keys)
    }

    /// Whether `ip` is in the `always_allow` list that applies to it (the dashboard lets such clients read
    /// without a key).
    pub fn always_allowed(&self, ip: IpAddr) -> bool {
        self.peer_for(ip)
            .map(|p| &p.acl)
            .unwrap_or(&self.acl)
            .allow
            .iter()
            .any(|c| c.contains(ip))
    }

    /// The API keys accepted from a client at `ip`.
    pub fn api_keys_for(&self, ip: IpAddr) -> &[String] {
        self.peer_for(ip)
            .map(|p| p.api_keys.as_slice())
            .unwrap_or(&self.api_keys)
    }

    /// The `auth_failure_limit` that applies to `ip` (its `peer` stanza's, else the listen stanza's); `None` (no
    /// address): the listen stanza's.
    pub fn auth_failure_limit_for(&self, ip: Option<IpAddr>) -> u32 {
        ip.and_then(|ip| self.peer_for(ip))
            .map_or(self.auth_failure_limit, |p| p.auth_failure_limit)
    }
}

fn auth_failure_limit(r: &Resolver<'_>) -> u32 {
    r.value(Opt::AuthFailureLimit)
        .as_int()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(5)
}

fn api_keys(r: &Resolver<'_>) -> Vec<String> {
    let mut keys: Vec<String> = r.string(Opt::ApiKey).into_iter().collect();
    keys.extend(r.value(Opt::ApiKeys).as_list().iter().cloned());
    keys
}

pub(crate) fn listeners(root: &Node) -> Vec<ListenerSettings> {
    let mut out = Vec::new();
    for l in root.children().iter().filter(|c| c.kind.is_listener()) {
        let Some(kind) = ListenerKind::from_scope(l.kind) else {
            continue;
        };
        for a in l.children_of(ScopeKind::Listen) {
            let Some(address) = a.name.clone() else {
                continue;
            };
            let Ok(addr) = address.parse::<ListenAddr>() else {
                continue;
            };
            let r = Resolver::new(vec![a, l]);
            // The listen stanza's peers, then the listener's that it does not redeclare (the same block, however
            // written). A client takes the most specific that contains it ([`ListenerSettings::peer_for`]), which
            // falls back as `config eval` does: listen::peer > listen > listener::peer > listener
            // ([`listener_nodes`]).
            let own: Vec<Cidr> = a
                .children_of(ScopeKind::Peer)
                .filter_map(|p| p.name.as_deref()?.parse::<Cidr>().ok())
                .collect();
            let redeclared = |p: &Node| {
                a.child(ScopeKind::Peer, p.name.as_deref()).is_some()
                    || p.name
                        .as_deref()
                        .and_then(|n| n.parse::<Cidr>().ok())
                        .is_some_and(|c| own.iter().any(|o| covers(o, &c) && covers(&c, o)))
            };
            let peer_nodes = a
                .children_of(ScopeKind::Peer)
                .chain(l.children_of(ScopeKind::Peer).filter(|p| !redeclared(p)));
            let peers = peer_nodes
                .filter_map(|p| {
                    let cidr = p.name.as_deref()?.parse::<Cidr>().ok()?;
                    let r = Resolver::new(listener_nodes(l, Some(a), Some(p)));
                    Some(PeerSettings {
                        cidr,
                        mcmt_reception: r
                            .word_as(Opt::McmtReception, McmtReception::from_word)
                            .unwrap_or(McmtReception::Passthru),
                        acl: Acl {
                            allow: r.cidrs(Opt::AlwaysAllow),
                            deny: r.cidrs(Opt::AlwaysDeny),
                        },
                        api_keys: api_keys(&r),
                        admin_keys: r.value(Opt::DashboardAdminKeys).as_list().to_vec(),
                        auth_failure_limit: auth_failure_limit(&r),
                    })
                })
                .collect();
            let own_enable = |n: &Node| {
                n.get(Opt::Enable.id())
                    .and_then(|s| s.value.as_bool())
                    .unwrap_or(true)
            };
            out.push(ListenerSettings {
                kind,
                address,
                addr,
                enabled: own_enable(l) && own_enable(a),
                mcmt_reception: r
                    .word_as(Opt::McmtReception, McmtReception::from_word)
                    .unwrap_or(McmtReception::Passthru),
                tls_certificate: r.path(Opt::TlsCertificate),
                tls_key: r.path(Opt::TlsKey),
                acl: Acl {
                    allow: r.cidrs(Opt::AlwaysAllow),
                    deny: r.cidrs(Opt::AlwaysDeny),
                },
                api_keys: api_keys(&r),
                admin_keys: r.value(Opt::DashboardAdminKeys).as_list().to_vec(),
                dashboard_hosts: r.value(Opt::DashboardHosts).as_list().to_vec(),
                auth_failure_limit: auth_failure_limit(&r),
                max_request_size: r
                    .value(Opt::MaxRequestSize)
                    .as_int()
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|n| *n > 0),
                http_services: HttpServices::from_words(r.value(Opt::HttpServices).as_list()),
                file_mode: r.mode(Opt::FileMode),
                peers,
            });
        }
    }
    out
}

/// `enabled` and `debug_level` of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSettings {
    pub enabled: bool,
    pub debug_level: String,
}

pub(crate) fn module(root: &Node, kind: ScopeKind) -> Option<ModuleSettings> {
    let m = root.child(kind, None)?;
    let r = Resolver::new(vec![m]);
    Some(ModuleSettings {
        enabled: r.bool(Opt::Enabled),
        debug_level: r.word(Opt::DebugLevel).to_string(),
    })
}

/// One `apn_logger "NAME" { … }` instance (docs/momentum-compat.md#apn-logger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnLoggerSettings {
    pub name: String,
    pub enabled: bool,
    pub logfile: PathBuf,
    pub logmode: u32,
    pub heartbeat: Option<Duration>,
    pub log_delivery: bool,
    pub log_delivery_format: String,
    pub log_heartbeat_format: String,
    pub log_permfail: bool,
    pub log_permfail_format: String,
    pub log_tempfail: bool,
    pub log_tempfail_format: String,
}

pub(crate) fn apn_loggers(root: &Node) -> Vec<ApnLoggerSettings> {
    root.children_of(ScopeKind::ApnLogger)
        .map(|n| {
            let r = Resolver::new(vec![n]);
            let hb = r.secs(Opt::Heartbeat);
            ApnLoggerSettings {
                name: n.name.clone().unwrap_or_default(),
                enabled: r.bool(Opt::Enabled),
                logfile: r.path(Opt::Logfile).unwrap_or_default(),
                logmode: r.mode(Opt::Logmode),
                heartbeat: (!hb.is_zero()).then_some(hb),
                log_delivery: r.bool(Opt::LogDelivery),
                log_delivery_format: r.word(Opt::LogDeliveryFormat).to_string(),
                log_heartbeat_format: r.word(Opt::LogHeartbeatFormat).to_string(),
                log_permfail: r.bool(Opt::LogPermfail),
                log_permfail_format: r.word(Opt::LogPermfailFormat).to_string(),
                log_tempfail: r.bool(Opt::LogTempfail),
                log_tempfail_format: r.word(Opt::LogTempfailFormat).to_string(),
            }
        })
        .collect()
}

/// One `ec_logger "NAME" { … }` instance (docs/momentum-compat.md#mainlog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcLoggerSettings {
    pub name: String,
    pub enabled: bool,
    pub mainlog: PathBuf,
    pub mainlog_mode: u32,
    pub paniclog: PathBuf,
    pub paniclog_mode: u32,
    pub rejectlog: PathBuf,
    pub rejectlog_mode: u32,
    pub heartbeat: Option<Duration>,
    pub log_receptions: bool,
    pub log_deliveries: bool,
    pub log_transient_failures: bool,
    pub log_permanent_failures: bool,
    pub log_rejections: bool,
    pub log_errors: bool,
}

pub(crate) fn ec_loggers(root: &Node) -> Vec<EcLoggerSettings> {
    root.children_of(ScopeKind::EcLogger)
        .map(|n| {
            let r = Resolver::new(vec![n]);
            let hb = r.secs(Opt::Heartbeat);
            EcLoggerSettings {
                name: n.name.clone().unwrap_or_default(),
                enabled: r.bool(Opt::Enabled),
                mainlog: r.path(Opt::Mainlog).unwrap_or_default(),
                mainlog_mode: r.mode(Opt::MainlogMode),
                paniclog: r.path(Opt::Paniclog).unwrap_or_default(),
                paniclog_mode: r.mode(Opt::PaniclogMode),
                rejectlog: r.path(Opt::Rejectlog).unwrap_or_default(),
                rejectlog_mode: r.mode(Opt::RejectlogMode),
                heartbeat: (!hb.is_zero()).then_some(hb),
                log_receptions: r.bool(Opt::LogReceptions),
                log_deliveries: r.bool(Opt::LogDeliveries),
                log_transient_failures: r.bool(Opt::LogTransientFailures),
                log_permanent_failures: r.bool(Opt::LogPermanentFailures),
                log_rejections: r.bool(Opt::LogRejections),
                log_errors: r.bool(Opt::LogErrors),
            }
        })
        .collect()
}

/// The spool settings (global scope; herald additions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub backend: SpoolBackend,
    pub nats_url: Option<String>,
    pub nats_stream: String,
    pub nats_replicas: u32,
    pub nats_credentials: Option<PathBuf>,
    pub nats_token: Option<String>,
    pub nats_tls_ca: Option<PathBuf>,
    pub nats_tls_cert: Option<PathBuf>,
    pub nats_tls_key: Option<PathBuf>,
    pub nats_timeout: Duration,
    pub nats_ack_wait: Duration,
    pub nats_max_ack_pending: u32,
    pub nats_max_held: u32,
}

impl SpoolSettings {
    /// The NATS servers of `spool_nats_url` (separated by commas or spaces).
    pub fn nats_servers(&self) -> Vec<String> {
        self.nats_url
            .as_deref()
            .unwrap_or("")
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

pub(crate) fn spool(root: &Node) -> SpoolSettings {
    let r = Resolver::new(vec![root]);
    SpoolSettings {
        dir: r.path(Opt::SpoolDir).unwrap_or_default(),
        backend: r
            .word_as(Opt::SpoolBackend, SpoolBackend::from_word)
            .unwrap_or(SpoolBackend::Embedded),
        nats_url: r.string(Opt::SpoolNatsUrl),
        nats_stream: r.word(Opt::SpoolNatsStream).to_string(),
        nats_replicas: r.u32(Opt::SpoolNatsReplicas),
        nats_credentials: r.path(Opt::SpoolNatsCredentials),
        nats_token: r.string(Opt::SpoolNatsToken),
        nats_tls_ca: r.path(Opt::SpoolNatsTlsCa),
        nats_tls_cert: r.path(Opt::SpoolNatsTlsCert),
        nats_tls_key: r.path(Opt::SpoolNatsTlsKey),
        nats_timeout: r.secs(Opt::SpoolNatsTimeout),
        nats_ack_wait: r.secs(Opt::SpoolNatsAckWait),
        nats_max_ack_pending: r.u32(Opt::SpoolNatsMaxAckPending),
        nats_max_held: r.u32(Opt::SpoolNatsMaxHeld),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_allow_beats_deny_and_default_is_open() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let open = Acl::default();
        assert!(open.permits(ip("192.0.2.1")));
        let acl = Acl {
            allow: vec![c("127.0.0.0/8")],
            deny: vec![c("0.0.0.0/0")],
        };
        assert!(acl.permits(ip("127.0.0.1")));
        assert!(!acl.permits(ip("192.0.2.1")));
        assert!(
            acl.permits(ip("::1")),
            "an IPv6 client is not in an IPv4 deny list"
        );
    }

    fn peer(cidr: &str) -> PeerSettings {
        PeerSettings {
            cidr: cidr.parse().unwrap(),
            mcmt_reception: McmtReception::Passthru,
            acl: Acl::default(),
            api_keys: vec![cidr.to_owned()],
            admin_keys: vec![],
            auth_failure_limit: 5,
        }
    }

    /// An IPv4 block and a block of mapped IPv6 addresses are compared on one scale: `::ffff:10.0.0.0/104` is a
    /// /8 and loses to `10.1.0.0/16`, whichever form the client's address takes.
    #[test]
    fn the_narrowest_peer_block_wins_across_address_families() {
        let listener = |peers: &[&str]| ListenerSettings {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".into(),
            addr: ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            enabled: true,
            mcmt_reception: McmtReception::Passthru,
            tls_certificate: None,
            tls_key: None,
            acl: Acl::default(),
            api_keys: vec![],
            admin_keys: vec![],
            dashboard_hosts: vec![],
            auth_failure_limit: 5,
            max_request_size: None,
            http_services: HttpServices::default(),
            file_mode: 0o644,
            peers: peers.iter().map(|c| peer(c)).collect(),
        };
        let key = |l: &ListenerSettings, ip: &str| {
            l.peer_for(ip.parse().unwrap())
                .map(|p| p.api_keys[0].clone())
        };
        for peers in [
            ["::ffff:10.0.0.0/104", "10.1.0.0/16"],
            ["10.1.0.0/16", "::ffff:10.0.0.0/104"],
        ] {
            let l = listener(&peers);
            for client in ["10.1.2.3", "::ffff:10.1.2.3"] {
                assert_eq!(key(&l, client).as_deref(), Some("10.1.0.0/16"), "{client}");
            }
            assert_eq!(key(&l, "10.2.0.1").as_deref(), Some("::ffff:10.0.0.0/104"));
        }
        let l = listener(&["10.0.0.0/8", "::ffff:10.1.0.0/112"]);
        assert_eq!(key(&l, "10.1.2.3").as_deref(), Some("::ffff:10.1.0.0/112"));
        let l = listener(&["::/0", "0.0.0.0/0"]);
        assert_eq!(key(&l, "::ffff:10.1.2.3").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(key(&l, "2001:db8::1").as_deref(), Some("::/0"));
    }
}
