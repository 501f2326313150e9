//! Credential diagnostics for `herald check` (TN2265's checklist): for every configured APNs domain, the client
//! certificate loads (PEM or PKCS#12 with its password), its key matches, it is within its validity dates (a warning
//! under 30 days), the topic (`apn_topic`) is one the certificate covers, its environment fits the route's host, the
//! `.p8` key parses and its key id matches the file name, the retired binary gateway is flagged, and (optionally)
//! the route answers a TLS handshake with this identity.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_apns::identity::CertEnvironment;
use herald_apns::provider_token::SigningKey;
use herald_conf::{
    Config, DeliveryMethod, DomainSettings, Location, Opt, RouteProtocol, ScopeKind,
};

use crate::delivery::ConfigResolver;
use crate::queue::SettingsResolver;
use crate::queue::message::DEFAULT_BINDING;

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one domain's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub domain: String,
    /// The binding whose settings the finding is about; `None` for the `default` binding.
    pub binding: Option<String>,
    pub severity: Severity,
    pub message: String,
    /// The statement or stanza of the configuration the finding is about (where the option is set, else the
    /// domain stanza); `None` when the configuration declares neither.
    pub at: Option<Location>,
}

/// `domain D: error: …`, or `binding B domain D: error: …` for another binding than `default` (without the
/// position: `herald check` writes [`Finding::at`] before it).
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if let Some(b) = &self.binding {
            write!(f, "binding {b} ")?;
        }
        write!(f, "domain {}: {level}: {}", self.domain, self.message)
    }
}

/// Whether two (binding, domain) settings deliver with the same route and credentials, so that whatever is wrong
/// with one is wrong with the other: `check` and the reload's check try a binding only when it changes one of
/// these.
pub fn same_credentials(a: &DomainSettings, b: &DomainSettings) -> bool {
    a.delivery_method == b.delivery_method
        && a.routes == b.routes
        && a.tls_verify == b.tls_verify
        && a.tls_ca == b.tls_ca
        && a.tls_certificate == b.tls_certificate
        && a.tls_key == b.tls_key
        && a.tls_pkcs12 == b.tls_pkcs12
        && a.tls_pkcs12_password == b.tls_pkcs12_password
        && a.apn_topic == b.apn_topic
        && a.apn_key == b.apn_key
        && a.apn_key_id == b.apn_key_id
        && a.apn_team_id == b.apn_team_id
        && a.apn_binary_format == b.apn_binary_format
}

/// Checks every exactly named domain (regex domains have no single route to test) from every declared binding
/// (`default` first) that delivers it with `delivery_method = apn`, as notifications naming that binding would be
/// delivered; a binding with the same route and credentials as one already checked is not checked again, and a
/// finding the same as one already made for the domain is not repeated. A (binding, domain) that passes the
/// checklist then has its delivery settings built exactly as `herald serve` builds them (client identity, trust,
/// TLS configuration, provider-token signer), so whatever the TLS stack would refuse at the first notification is
/// an error here.
pub fn check(config: &Arc<Config>, now: SystemTime) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    let resolver = ConfigResolver::new(config.clone());
    let bindings = config.bindings();
    for domain in config.domains().into_iter().filter(|d| !d.starts_with('/')) {
        let mut checked: Vec<Arc<DomainSettings>> = Vec::new();
        let first = findings.len();
        let mut apn_somewhere = false;
        for &(group, binding) in &bindings {
            let d = config.domain_settings(group, Some(binding), domain);
            apn_somewhere |= d.delivery_method == DeliveryMethod::Apn;
            if d.delivery_method != DeliveryMethod::Apn
                || checked.iter().any(|c| same_credentials(c, &d))
            {
                continue;
            }
            checked.push(d.clone());
            let named = (binding != DEFAULT_BINDING).then(|| binding.to_owned());
            let mut found = Vec::new();
            let mut missing_files = false;
            check_domain(&d, now, &mut |severity, opt, message| {
                missing_files |= message.ends_with(MISSING_FILE);
                found.push(Finding {
                    domain: domain.to_owned(),
                    binding: named.clone(),
                    severity,
                    message,
                    at: config.delivery_location(group, Some(binding), domain, opt),
                })
            });
            let clean = !found.iter().any(|f| f.severity == Severity::Error);
            if clean
                && !missing_files
                && let Err(message) = resolver.resolve_binding(binding, domain)
            {
                found.push(Finding {
                    domain: domain.to_owned(),
                    binding: named.clone(),
                    severity: Severity::Error,
                    message: message.to_string(),
                    at: config.delivery_location(group, Some(binding), domain, None),
                });
            }
            for f in found {
                let repeated = findings[first..]
                    .iter()
                    .any(|g| g.severity == f.severity && g.message == f.message && g.at == f.at);
                if !repeated {
                    findings.push(f);
                }
            }
        }
        if !apn_somewhere && let Some(f) = apns_options_unused(config, domain) {
            findings.push(f);
        }
    }
    findings
}

/// A domain that sets APNs options (`apn_key`, `apn_topic`, `tls_pkcs12`) in its own stanza while no binding
/// delivers it with `delivery_method = apn`: herald takes none of its notifications (they are refused as another
/// delivery method's), which a configuration missing its `delivery_method` line does unnoticed. A warning at the
/// first such option.
fn apns_options_unused(config: &Config, domain: &str) -> Option<Finding> {
    // Only options of the domain's own top-level stanza: APNs options set globally for the APNs domains are no
    // mistake for another one.
    let stanza = config
        .tree()
        .matching_named(herald_conf::ScopeKind::Domain, domain)
        .next()?;
    let (name, setting) = [
        (Opt::ApnKey, "apn_key"),
        (Opt::ApnTopic, "apn_topic"),
        (Opt::TlsPkcs12, "tls_pkcs12"),
    ]
    .into_iter()
    .find_map(|(opt, name)| Some((name, stanza.get(opt.id())?)))?;
    let method = config
        .domain_settings(None, Some(DEFAULT_BINDING), domain)
        .delivery_method
        .word()
        .to_ascii_lowercase();
    Some(Finding {
        domain: domain.to_owned(),
        binding: None,
        severity: Severity::Warning,
        message: format!(
            "{name} is set but delivery_method is {method}, not apn, for every binding: herald takes no \
             notification for this domain; set delivery_method = apn"
        ),
        at: Some(setting.at.clone()),
    })
}

/// One finding about a listener's TLS identity (`tls_certificate`, `tls_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerFinding {
    /// `http_listener ADDRESS`, `esmtp_listener ADDRESS` or `control_listener ADDRESS`.
    pub listener: String,
    pub severity: Severity,
    pub message: String,
    /// Where the file is named (`tls_certificate` or `tls_key`), else the listen stanza.
    pub at: Option<Location>,
}

impl std::fmt::Display for ListenerFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {level}: {}", self.listener, self.message)
    }
}

/// Loads the TLS identity of every HTTP, ESMTP and control listener that has one, as `herald serve` does at start
/// and at a reload: what it would refuse is an error here. A file missing on this machine is a warning (the configuration
/// may be checked elsewhere than where it runs).
pub fn check_listeners(config: &Config) -> Vec<ListenerFinding> {
    let mut findings = Vec::new();
    for l in config.listeners() {
        let kind = match l.kind {
            herald_conf::ListenerKind::Http => "http_listener",
            herald_conf::ListenerKind::Esmtp => "esmtp_listener",
            herald_conf::ListenerKind::Control => "control_listener",
            _ => continue,
        };
        let Some(cert) = &l.tls_certificate else {
            continue;
        };
        let listener = format!("{kind} {}", l.address);
        let at = |opt: Opt| listener_location(config, kind, &l.address, opt);
        let missing: Vec<_> = [Some(cert), l.tls_key.as_ref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.exists())
            .collect();
        if !missing.is_empty() {
            for p in missing {
                let opt = if p == cert {
                    Opt::TlsCertificate
                } else {
                    Opt::TlsKey
                };
                findings.push(ListenerFinding {
                    listener: listener.clone(),
                    severity: Severity::Warning,
                    message: format!("{} {MISSING_FILE}", p.display()),
                    at: at(opt),
                });
            }
            continue;
        }
        let loaded = match l.kind {
            herald_conf::ListenerKind::Http => crate::inbound::rest::tls_config(&l)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => crate::inbound::smtp::tls::server_config(cert, l.tls_key.as_deref())
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(message) = loaded {
            findings.push(ListenerFinding {
                listener,
                severity: Severity::Error,
                message,
                at: at(Opt::TlsCertificate),
            });
        }
    }
    findings
}

/// Where listener `kind` (its keyword) listening on `address` sets `opt` (its listen stanza, else the listener),
/// else where the listen stanza opens.
fn listener_location(config: &Config, kind: &str, address: &str, opt: Opt) -> Option<Location> {
    let l = config.tree().child(ScopeKind::from_keyword(kind)?, None)?;
    let a = l.child(ScopeKind::Listen, Some(address));
    [a, Some(l)]
        .into_iter()
        .flatten()
        .find_map(|n| n.get(opt.id()))
        .map(|s| s.at.clone())
        .or_else(|| a.and_then(|a| a.at.clone()))
        .or_else(|| l.at.clone())
}

/// The finding about a token-authenticated domain with no topic to give a notification whose sender names none
/// (docs/apns-protocol.md#http2-request): herald refuses such notifications at the door, since APNs would answer
/// `MissingTopic`.
const TOKEN_WITHOUT_TOPIC: &str = "apn_key without apn_topic: APNs requires a topic on token-authenticated \
     connections, so every notification must name its topic (REST \"topic\", MCMT X-APNs-Topic) or herald refuses \
     it; set apn_topic = \"<bundle id>\" to give the others one (push types with a suffix get it appended)";

/// How a finding about a credential file that is not on this machine ends.
const MISSING_FILE: &str = "does not exist here; the credentials in it were not checked";

/// What is wrong with the Key ID or Team ID `id` of option `name`, if anything: Apple's are 10 upper-case ASCII
/// letters and digits (docs/apns-protocol.md#provider-tokens), and a token with another is refused only at run time
/// (`403 InvalidProviderToken`). A character outside ASCII letters and digits (a space, a quote, a line break copied
/// along) is an error; another length, or lower case, a warning, since test setups may use other ids. An empty one
/// is left to the key's own check.
fn apple_id_finding(name: &str, id: &str) -> Option<(Severity, String)> {
    if id.is_empty() {
        return None;
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_alphanumeric()) {
        let what = if c.is_whitespace() {
            "white space"
        } else {
            "a character other than letters and digits"
        };
        return Some((
            Severity::Error,
            format!(
                "{name} {id:?} contains {what} ({c:?}); Apple's ids are 10 letters and digits, and APNs refuses a \
                 token with another as InvalidProviderToken"
            ),
        ));
    }
    let len = id.len();
    if len != 10 || id.chars().any(|c| c.is_ascii_lowercase()) {
        let shape = if len != 10 {
            format!("{len} characters long")
        } else {
            "in part in lower case".to_owned()
        };
        return Some((
            Severity::Warning,
            format!(
                "{name} {id:?} is {shape}; Apple's ids are 10 upper-case letters and digits, and APNs refuses a \
                 token with another as InvalidProviderToken"
            ),
        ));
    }
    None
}

/// The checklist for one (binding, domain); `say` takes each finding with the option it is about (`None`: the
/// domain as a whole).
pub(crate) fn check_domain(
    d: &DomainSettings,
    now: SystemTime,
    say: &mut dyn FnMut(Severity, Option<Opt>, String),
) {
    let Some(route) = d.routes.first() else {
        say(
            Severity::Error,
            None,
            "no routes: set routes = ( \"https://api.push.apple.com\" )".into(),
        );
        return;
    };
    let host = route.host.to_ascii_lowercase();
    let sandbox_host = host.contains("sandbox") || host.contains("development");
    let apple_host = host.ends_with(".push.apple.com");
    if route.protocol == RouteProtocol::Binary && apple_host {
        say(
            Severity::Warning,
            Some(Opt::Routes),
            format!(
                "{host} is the legacy binary gateway, which Apple retired on 31 March 2021; use an https:// route"
            ),
        );
    }

    // A file missing here may exist on the host that runs herald: say so, but check what can be checked.
    let missing = [
        (&d.tls_pkcs12, Opt::TlsPkcs12),
        (&d.tls_certificate, Opt::TlsCertificate),
        (&d.tls_key, Opt::TlsKey),
        (&d.apn_key, Opt::ApnKey),
    ]
    .into_iter()
    .filter_map(|(p, opt)| Some((p.as_ref()?, opt)))
    .filter(|(p, _)| !p.exists())
    .collect::<Vec<_>>();
    for (p, opt) in &missing {
        say(
            Severity::Warning,
            Some(*opt),
            format!("{} {MISSING_FILE}", p.display()),
        );
    }
    if !missing.is_empty() {
        return;
    }
    // The option that names the client identity: a PKCS#12 file, else the certificate.
    let cert = Some(if d.tls_pkcs12.is_some() {
        Opt::TlsPkcs12
    } else {
        Opt::TlsCertificate
    });
    let identity = crate::delivery::load_identity(d).map(|(_, identity)| identity);
    match identity {
        Some(Err(e)) => say(Severity::Error, cert, e),
        Some(Ok(identity)) => match identity.info() {
            Err(e) => say(Severity::Error, cert, format!("client certificate: {e}")),
            Ok(info) => {
                if let Err(e) = info.check_validity(now) {
                    say(Severity::Error, cert, format!("client certificate: {e}"));
                } else if let Ok(left) = info.not_after.duration_since(now)
                    && left < EXPIRY_WARNING
                {
                    say(
                        Severity::Warning,
                        cert,
                        format!(
                            "client certificate expires in {} days",
                            left.as_secs() / 86_400
                        ),
                    );
                }
                match &d.apn_topic {
                    Some(topic) if !info.allows_topic(topic) => say(
                        Severity::Error,
                        Some(Opt::ApnTopic),
                        format!(
                            "apn_topic {topic:?} is not a topic of the client certificate (UID {:?}, topics {:?})",
                            info.uid, info.topics
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        if let Err(e) = info.default_topic() {
                            say(Severity::Error, cert, format!("client certificate: {e}"));
                        }
                    }
                }
                if apple_host {
                    match (info.environment, sandbox_host) {
                        (CertEnvironment::Production, true) => say(
                            Severity::Error,
                            Some(Opt::Routes),
                            format!(
                                "a production certificate cannot push to the sandbox host {host}"
                            ),
                        ),
                        (CertEnvironment::Development, false) => say(
                            Severity::Error,
                            Some(Opt::Routes),
                            format!(
                                "a development (sandbox) certificate cannot push to the production host {host}"
                            ),
                        ),
                        _ => {}
                    }
                }
            }
        },
        None => {}
    }

    if let Some(p8) = &d.apn_key {
        match (&d.apn_key_id, &d.apn_team_id) {
            (Some(key_id), Some(team_id)) => {
                for (opt, name, id) in [
                    (Opt::ApnKeyId, "apn_key_id", key_id),
                    (Opt::ApnTeamId, "apn_team_id", team_id),
                ] {
                    if let Some((severity, message)) = apple_id_finding(name, id) {
                        say(severity, Some(opt), message);
                    }
                }
                if let Err(e) = SigningKey::from_p8_file(p8, key_id, team_id) {
                    say(
                        Severity::Error,
                        Some(Opt::ApnKey),
                        format!("apn_key {}: {e}", p8.display()),
                    );
                }
                let stem = p8.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if let Some(file_id) = stem.strip_prefix("AuthKey_")
                    && file_id != key_id
                {
                    say(
                        Severity::Warning,
                        Some(Opt::ApnKeyId),
                        format!(
                            "apn_key_id {key_id:?} differs from the key id {file_id:?} in the file name"
                        ),
                    );
                }
            }
            _ => say(
                Severity::Error,
                Some(Opt::ApnKey),
                "apn_key needs apn_key_id and apn_team_id".into(),
            ),
        }
        if route.protocol == RouteProtocol::Binary {
            say(
                Severity::Error,
                Some(Opt::Routes),
                "provider tokens (apn_key) work only over HTTP/2 routes".into(),
            );
        } else if d.apn_topic.is_none() && d.tls_certificate.is_none() && d.tls_pkcs12.is_none() {
            // A warning, not an error: senders may name the topic of every notification themselves.
            say(
                Severity::Warning,
                Some(Opt::ApnKey),
                TOKEN_WITHOUT_TOPIC.into(),
            );
        }
    } else if d.tls_certificate.is_none() && d.tls_pkcs12.is_none() {
        say(
            Severity::Error,
            None,
            crate::delivery::NO_CREDENTIALS.into(),
        );
    }
}

/// Opens a TLS connection to each domain's route with its identity (within `timeout`), from every binding that
/// reaches it differently (its own route, `bind_address` or credentials; see
/// [`ConfigResolver::distinct_bindings`]); one finding per failure, naming the binding when it is not `default`.
pub async fn check_reachable(resolver: &ConfigResolver, timeout: Duration) -> Vec<Finding> {
    let config = resolver.config();
    let mut findings = Vec::new();
    for domain in config.domains().into_iter().filter(|d| !d.starts_with('/')) {
        // Settings that cannot be built (or a domain no binding delivers with `apn`) are reported by `check`.
        for settings in resolver.distinct_bindings(domain) {
            let result = herald_apns::client::connect::connect_tls(
                &settings.endpoint,
                settings.tls.clone(),
                timeout,
            )
            .await;
            if let Err(e) = result {
                let from = match &*settings.binding {
                    DEFAULT_BINDING => String::new(),
                    b => format!(" from binding {b}"),
                };
                let source = settings
                    .endpoint
                    .bind
                    .map(|a| format!(" (source address {a})"))
                    .unwrap_or_default();
                findings.push(Finding {
                    domain: domain.to_owned(),
                    // Named in the message, as `check --connect` always has.
                    binding: None,
                    severity: Severity::Error,
                    message: format!(
                        "route {}{from}{source} is not reachable: {e}",
                        settings.endpoint
                    ),
                    at: config.delivery_location(
                        None,
                        Some(&*settings.binding),
                        domain,
                        Some(Opt::Routes),
                    ),
                });
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token-authenticated domain without `apn_topic` (and no certificate to take a bundle id from) is reported
    /// as a warning: herald refuses its notifications that name no topic. With `apn_topic` it is clean.
    #[test]
    fn apn_key_without_apn_topic_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let pki = herald_sim::Pki::generate(dir.path(), &[]).unwrap();
        let key = &pki.manifest.token_key;
        let config = |topic: &str| {
            let text = format!(
                "domain \"token.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n \
                 tls_verify = ca\n tls_ca = \"{ca}\"\n apn_key = \"{p8}\"\n apn_key_id = \"{kid}\"\n \
                 apn_team_id = \"{tid}\"\n{topic}}}\n",
                ca = pki.manifest.ca_cert.display(),
                p8 = key.p8.display(),
                kid = key.key_id,
                tid = key.team_id,
            );
            Arc::new(Config::parse_str("check.conf", &text).unwrap())
        };
        let findings = check(&config(""), SystemTime::now());
        assert_eq!(
            findings,
            vec![Finding {
                domain: "token.example".into(),
                binding: None,
                severity: Severity::Warning,
                message: TOKEN_WITHOUT_TOPIC.into(),
                // The statement that sets apn_key: line 6.
                at: Some(Location {
                    file: "check.conf".into(),
                    line: 6,
                    col: 2,
                }),
            }]
        );
        assert!(
            findings[0]
                .to_string()
                .starts_with("domain token.example: warning: apn_key without apn_topic"),
            "{}",
            findings[0]
        );
        assert!(!TOKEN_WITHOUT_TOPIC.contains("  "));
        let findings = check(
            &config(" apn_topic = \"com.example.app\"\n"),
            SystemTime::now(),
        );
        assert_eq!(findings, vec![]);
    }

    /// A domain whose own stanza sets APNs options while no binding delivers it with `apn` (its `delivery_method`
    /// line forgotten) is warned about at the first such option; APNs options set globally are not, nor is a
    /// domain that does say `delivery_method = apn`.
    #[test]
    fn apns_options_on_a_domain_not_delivered_with_apn_are_a_warning() {
        let config = |text: &str| Arc::new(Config::parse_str("check.conf", text).unwrap());
        let findings = check(
            &config(
                "apn_topic = \"com.example.global\"\ndomain \"forgot.example\" {\n routes = ( \"https://127.0.0.1:1\" )\n \
                 apn_topic = \"com.example.app\"\n}\ndomain \"mail.example\" { }\n",
            ),
            SystemTime::now(),
        );
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].domain, "forgot.example");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert_eq!(
            findings[0].message,
            "apn_topic is set but delivery_method is esmtp, not apn, for every binding: herald takes no notification \
             for this domain; set delivery_method = apn"
        );
        assert_eq!(findings[0].at.as_ref().map(|a| a.line), Some(4));
    }
}
