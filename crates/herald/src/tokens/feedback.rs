//! Polling the binary feedback service (docs/apns-protocol.md#feedback-service): for each domain with a binary route
//! and an `apn_feedback_interval`, connect with the domain's client certificate, read the 38-byte tuples until the
//! service closes (with TLS close_notify or, as some servers do, with the bare TCP close), and record each token in
//! the invalid-token store. A domain is polled from every binding that
//! reaches APNs differently (its own route, `bind_address` or certificate), each with the options that binding
//! resolves (docs/configuration.md, "Bindings in delivery"): the service lists the tokens of the certificate
//! that asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use herald_apns::binary::FeedbackDecoder;
use herald_apns::client::connect::{Endpoint, connect_tls};
use herald_apns::token_hex::DeviceToken;
use herald_conf::{Config, ScopePath, Value};
use tokio::io::AsyncReadExt;

use super::store::{InvalidTokenEntry, InvalidTokenStore};
use crate::delivery::ConfigResolver;
use crate::outbound::settings::{DeliverySettings, RouteProtocol};
use crate::queue::ResolveError;
use crate::queue::message::DEFAULT_BINDING;

/// The feedback port of the binary era (docs/apns-protocol.md#feedback-service).
const FEEDBACK_PORT: u16 = 2196;
/// Longest a poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("domain {domain}: {reason}")]
    Settings { domain: String, reason: String },
    #[error("domain {domain}: {reason}")]
    Resolve {
        domain: String,
        #[source]
        reason: ResolveError,
    },
    #[error("feedback service {endpoint}: {reason}")]
    Service { endpoint: Endpoint, reason: String },
}

/// The scope path of `domain` delivered from `settings`' binding (and its group), for options the delivery
/// settings do not carry.
fn delivery_path(settings: &DeliverySettings, domain: &str) -> ScopePath {
    let mut path = ScopePath::global();
    if &*settings.binding_group != DEFAULT_BINDING {
        path = path.then(
            herald_conf::scopes::ScopeKind::BindingGroup,
            Some(&settings.binding_group),
        );
    }
    path.then(
        herald_conf::scopes::ScopeKind::Binding,
        Some(&settings.binding),
    )
    .then(herald_conf::scopes::ScopeKind::Domain, Some(domain))
}

/// Where the feedback service of a domain is, for delivery from `settings`' binding: `apn_feedback_address`,
/// else the route's `gateway.` host as `feedback.` on port 2196; from the binding's `bind_address`. An
/// `apn_feedback_address` that is not `host:port` (`[address]:port` for IPv6) is an error naming the option, its
/// value and what is wrong with it; a route host without `gateway.` and no `apn_feedback_address` is one too.
pub fn feedback_endpoint(
    config: &Config,
    domain: &str,
    settings: &DeliverySettings,
) -> Result<Endpoint, String> {
    let route = &settings.endpoint;
    let path = delivery_path(settings, domain);
    if let Ok(Value::Str(addr)) = config.eval_opt(&path, herald_conf::Opt::ApnFeedbackAddress) {
        let (host, port) = parse_feedback_address(addr).map_err(|why| {
            format!(
                "apn_feedback_address {addr:?} {why}; write it as host:port (e.g. feedback.push.apple.com:{FEEDBACK_PORT}, \
                 [::1]:{FEEDBACK_PORT} for an IPv6 address)"
            )
        })?;
        return Ok(Endpoint::new(host, port).bound_to(route.bind));
    }
    match route.host.strip_prefix("gateway.") {
        Some(rest) => {
            Ok(Endpoint::new(format!("feedback.{rest}"), FEEDBACK_PORT).bound_to(route.bind))
        }
        None => Err(format!(
            "no feedback address: the route host {} does not begin with gateway., from which the feedback host \
             is made; set apn_feedback_address = \"host:port\"",
            route.host
        )),
    }
}

/// The host and port of an `apn_feedback_address`, or what is wrong with it.
fn parse_feedback_address(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = match addr.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, port),
                None if rest.is_empty() => return Err("has no port".into()),
                None => return Err(format!("has {rest:?} after the IPv6 address, not :port")),
            },
            None => return Err("opens [ for an IPv6 address but never closes it".into()),
        },
        None => match addr.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("is an IPv6 address without brackets".into());
            }
            Some(parts) => parts,
            None => return Err("has no port".into()),
        },
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if port.is_empty() {
        return Err("has no port after the colon".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "has port {port:?}, which is not a port number (1 to 65535)"
        )),
        Ok(port) => Ok((host, port)),
    }
}

/// Connects once from the default binding and records every tuple; returns how many tokens the service listed.
pub async fn poll_once(
    resolver: &ConfigResolver,
    store: &InvalidTokenStore,
    domain: &str,
) -> Result<usize, FeedbackError> {
    let settings = resolver
        .build(domain)
        .map_err(|reason| FeedbackError::Resolve {
            domain: domain.to_owned(),
            reason,
        })?;
    poll_from(resolver, store, domain, &settings).await
}

/// Connects once with `settings` (one binding's route, source address and certificate) and records every tuple;
/// returns how many tokens the service listed.
pub async fn poll_from(
    resolver: &ConfigResolver,
    store: &InvalidTokenStore,
    domain: &str,
    settings: &DeliverySettings,
) -> Result<usize, FeedbackError> {
    if !matches!(settings.protocol, RouteProtocol::Binary(_)) {
        return Err(FeedbackError::Settings {
            domain: domain.to_owned(),
            reason: "the feedback service belongs to the binary protocol; HTTP/2 reports invalid tokens per request"
                .into(),
        });
    }
    let endpoint = feedback_endpoint(&resolver.config(), domain, settings).map_err(|reason| {
        FeedbackError::Settings {
            domain: domain.to_owned(),
            reason,
        }
    })?;
    let service = |reason: String| FeedbackError::Service {
        endpoint: endpoint.clone(),
        reason,
    };
    let read = async {
        let (mut stream, _) =
            connect_tls(&endpoint, settings.tls.clone(), settings.connect_timeout)
                .await
                .map_err(|e| service(e.to_string()))?;
        let mut decoder = FeedbackDecoder::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut count = 0;
        loop {
            let n = match stream.read_buf(&mut buf).await {
                Ok(n) => n,
                // The service closed TCP without TLS close_notify: the end of its list all the same (a tuple cut
                // off there is reported below, as at any end of stream).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(service(e.to_string())),
            };
            while let Some(tuple) = decoder
                .decode(&mut buf)
                .map_err(|e| service(e.to_string()))?
            {
                let token =
                    DeviceToken::from_bytes(tuple.token).map_err(|e| service(e.to_string()))?;
                store.record(InvalidTokenEntry {
                    domain: domain.to_owned(),
                    token: token.to_hex(),
                    reason: "feedback".into(),
                    timestamp_ms: u64::from(tuple.timestamp) * 1000,
                    learnt_ms: 0,
                    source: "feedback".into(),
                });
                count += 1;
            }
            if n == 0 {
                if !buf.is_empty() {
                    return Err(service(format!(
                        "{} bytes of a cut-off tuple at the end",
                        buf.len()
                    )));
                }
                return Ok(count);
            }
        }
    };
    tokio::time::timeout(POLL_TIMEOUT, read)
        .await
        .map_err(|_| service("timed out".into()))?
}

/// Polls every configured domain whose `apn_feedback_interval` is set, from every binding that reaches APNs
/// differently ([`ConfigResolver::distinct_bindings`]), each (binding, domain) on its own schedule with the
/// interval that binding resolves, reading the configuration in force at each round (so a reload takes effect).
/// Runs until the task is dropped.
pub async fn run_poller(resolver: Arc<ConfigResolver>, store: Arc<InvalidTokenStore>) {
    let mut last: HashMap<(String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let config = resolver.config();
        for domain in config.domains() {
            if domain.starts_with('/') {
                continue;
            }
            // Settings not built yet read credential files: on the blocking pool, not on an async thread. Not
            // `block_in_place`: a stop arriving meanwhile would leave this task polling its timer on a runtime
            // whose timers are gone (a panic at shutdown).
            let distinct = {
                let (resolver, domain) = (resolver.clone(), domain.to_owned());
                match crate::queue::run_blocking(move || resolver.distinct_bindings(&domain)).await
                {
                    Some(d) => d,
                    None => return,
                }
            };
            for settings in distinct {
                let interval = match config
                    .domain_settings(None, Some(&settings.binding), domain)
                    .apn_feedback_interval
                {
                    Some(i) => i,
                    None => continue,
                };
                let key = (settings.binding.to_string(), domain.to_owned());
                if last.get(&key).is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
                last.insert(key, Instant::now());
                let binding = &*settings.binding;
                match poll_from(&resolver, &store, domain, &settings).await {
                    Ok(n) => {
                        tracing::info!(domain, binding, tokens = n, "feedback service polled")
                    }
                    Err(e) => tracing::warn!(binding, "feedback poll: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_sim::{CertVariant, Pki, SimConfig};
    use tokio::io::AsyncWriteExt;

    const TOPIC: &str = "com.example.feedback";
    const DOMAIN: &str = "legacy.example";

    /// One feedback tuple (docs/apns-protocol.md#feedback-service) for a token of 32 bytes `fill`.
    fn tuple(timestamp: u32, fill: u8) -> Vec<u8> {
        let mut t = timestamp.to_be_bytes().to_vec();
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&[fill; 32]);
        t
    }

    /// A feedback service on 127.0.0.1 that writes `bytes` to the first connection and then drops the TCP
    /// connection without TLS close_notify; returns its address.
    async fn abrupt_service(pki: &Pki, bytes: Vec<u8>) -> std::net::SocketAddr {
        let material = SimConfig::from_pki(&pki.manifest).unwrap().tls;
        let tls = herald_sim::tls::server_config(&material, true, false).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = tokio_rustls::TlsAcceptor::from(tls)
                .accept(tcp)
                .await
                .unwrap();
            stream.write_all(&bytes).await.unwrap();
            stream.flush().await.unwrap();
            // Dropped without `shutdown`: no close_notify, only the TCP FIN.
            drop(stream);
        });
        addr
    }

    fn resolver(pki: &Pki, feedback: std::net::SocketAddr) -> ConfigResolver {
        resolver_for(pki, &feedback.to_string())
    }

    /// A resolver whose domain has `apn_feedback_address = "{feedback}"`.
    fn resolver_for(pki: &Pki, feedback: &str) -> ConfigResolver {
        let client = pki.client(TOPIC, CertVariant::Universal).unwrap();
        let text = format!(
            r#"
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port=2195" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_feedback_address = "{feedback}"
}}
"#,
            ca = pki.manifest.ca_cert.display(),
            cert = client.cert.display(),
            key = client.key.display(),
        );
        ConfigResolver::new(Arc::new(Config::parse_str("herald.conf", &text).unwrap()))
    }

    /// A feedback service that closes TCP without TLS close_notify after its last whole tuple has ended its list
    /// all the same: the poll succeeds with every tuple recorded. A tuple cut off there is still an error.
    #[tokio::test]
    async fn a_service_closing_without_close_notify_ends_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let store = InvalidTokenStore::open(&dir.path().join("tokens"), None).unwrap();

        let two = [tuple(1_700_000_000, 0xaa), tuple(1_700_000_001, 0xbb)].concat();
        let service = abrupt_service(&pki, two).await;
        let polled = poll_once(&resolver(&pki, service), &store, DOMAIN).await;
        assert_eq!(polled.unwrap(), 2);
        let mut tokens: Vec<String> = store
            .list(Some(DOMAIN), 0)
            .into_iter()
            .map(|e| e.token)
            .collect();
        tokens.sort();
        assert_eq!(tokens, vec!["aa".repeat(32), "bb".repeat(32)]);

        let cut = [
            tuple(1_700_000_002, 0xcc),
            tuple(1_700_000_003, 0xdd)[..20].to_vec(),
        ]
        .concat();
        let service = abrupt_service(&pki, cut).await;
        let polled = poll_once(&resolver(&pki, service), &store, DOMAIN).await;
        let err = polled.unwrap_err().to_string();
        assert!(err.contains("20 bytes of a cut-off tuple"), "{err}");
    }

    /// An `apn_feedback_address` that is not host:port is refused by the poll, naming the option, its value and
    /// what is wrong, rather than reported as missing; a well-formed one (IPv6 in brackets) is used as given.
    #[tokio::test]
    async fn a_malformed_feedback_address_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let store = InvalidTokenStore::open(&dir.path().join("tokens"), None).unwrap();
        for (address, why) in [
            ("feedback.example", "has no port"),
            ("feedback.example:", "has no port after the colon"),
            ("feedback.example:feedback", "has port \"feedback\""),
            ("feedback.example:70000", "has port \"70000\""),
            ("feedback.example:0", "has port \"0\""),
            (":2196", "has no host"),
            ("::1:2196", "is an IPv6 address without brackets"),
            ("[::1]", "has no port"),
            ("[::1", "opens [ for an IPv6 address but never closes it"),
            ("[::1]2196", "has \"2196\" after the IPv6 address"),
        ] {
            let err = poll_once(&resolver_for(&pki, address), &store, DOMAIN)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, FeedbackError::Settings { .. })
                    && text.starts_with(&format!(
                        "domain {DOMAIN}: apn_feedback_address {address:?} {why}"
                    ))
                    && text.contains("host:port")
                    && !text.contains("no feedback address"),
                "{address}: {text}"
            );
        }
        let resolver = resolver_for(&pki, "[::1]:2196");
        let settings = resolver.build(DOMAIN).unwrap();
        let endpoint = feedback_endpoint(&resolver.config(), DOMAIN, &settings).unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 2196));
    }
}
