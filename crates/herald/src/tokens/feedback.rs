//! Polling the binary feedback service (docs/apns-protocol.md#feedback-service): for each domain with a binary route
//! and an `apn_feedback_interval`, connect with the domain's client certificate, read the 38-byte tuples until the
//! service closes (with TLS close_notify or, as some servers do, with the bare TCP close), and record each token in
//! the invalid-token store, synced to disk at the end of the poll (the service forgets a list once read). A record
//! whose token cannot be one (0 bytes, or more than 100) is skipped with a warning and the list read on; only a
//! stream out of step ends the poll early. A slow service is waited for as long as bytes keep coming (60 s at most
//! between two reads, an hour in all); a failed poll is tried again sooner than the interval, after 30 s, then
//! twice as long after each failure in a row, up to 30 minutes. A domain is polled from every binding that
//! reaches APNs differently (its own route, `bind_address` or certificate), each with the options that binding
//! resolves (docs/configuration.md, "Bindings in delivery"): the service lists the tokens of the certificate
//! that asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
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
/// Longest a poll waits for the next bytes of the service (or for its connection, beyond `connect_timeout`).
const POLL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a poll may take in all: a list read at a few bytes a second still ends within it.
const POLL_MAX_TIME: Duration = Duration::from_secs(60 * 60);

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
    poll_within(resolver, store, domain, settings, PollLimits::default()).await
}

/// How long a poll may wait for the service: between two reads (a service that went silent), and in all (a
/// generous cap: a long list over a slow link takes as long as it takes, as long as bytes come).
#[derive(Debug, Clone, Copy)]
struct PollLimits {
    idle: Duration,
    total: Duration,
    /// The wait allowed until the first record came, where a test's `idle` is short (tests).
    #[cfg(test)]
    first_idle: Option<Duration>,
}

impl Default for PollLimits {
    fn default() -> Self {
        PollLimits {
            idle: POLL_IDLE_TIMEOUT,
            total: POLL_MAX_TIME,
            #[cfg(test)]
            first_idle: None,
        }
    }
}

impl PollLimits {
    /// The wait allowed for the next read, `count` records in.
    fn idle_after(&self, count: usize) -> Duration {
        #[cfg(test)]
        if count == 0
            && let Some(first) = self.first_idle
        {
            return first;
        }
        let _ = count;
        self.idle
    }
}

/// What the next bytes of the stream hold.
#[derive(Debug, PartialEq, Eq)]
enum Tuple {
    /// Not a whole tuple yet.
    Partial,
    /// A tuple: its time (Unix seconds) and token.
    Token { timestamp: u32, token: Vec<u8> },
    /// A tuple whose framing is intact but whose token cannot be one (empty, or longer than
    /// [`MAX_TOKEN_LEN`]): its declared length; it was taken off the stream.
    Skipped { len: usize },
}

/// The longest token a tuple may carry (the most Apple's text reserves for a token).
const MAX_TOKEN_LEN: usize = herald_apns::token_hex::TOKEN_MAX_LEN;

/// A tuple's length past which the stream is taken as out of step (no record of the service is anywhere near
/// it): the poll ends there rather than read tokens out of whatever follows.
const MAX_SKIPPABLE_LEN: usize = 1024;

/// Takes the next tuple off the front of `buf` (docs/apns-protocol.md#feedback-service: `timestamp u32 | length
/// u16 | token`). A tuple whose declared length is 0 or above [`MAX_TOKEN_LEN`] is skipped whole (the next begins
/// after it); one above [`MAX_SKIPPABLE_LEN`] means the framing is lost: an error, the stream is read no further.
fn next_tuple(buf: &mut BytesMut) -> Result<Tuple, String> {
    if buf.len() < 6 {
        return Ok(Tuple::Partial);
    }
    let timestamp = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if len > MAX_SKIPPABLE_LEN {
        return Err(format!(
            "a record declares a {len}-byte token (bytes {:02x?}): the stream is out of step, the rest of it \
             is not read",
            &buf[..6]
        ));
    }
    if buf.len() < 6 + len {
        return Ok(Tuple::Partial);
    }
    buf.advance(6);
    let token = buf.split_to(len).to_vec();
    if len == 0 || len > MAX_TOKEN_LEN {
        return Ok(Tuple::Skipped { len });
    }
    Ok(Tuple::Token { timestamp, token })
}

/// Skipped records a poll warns about one by one; the rest are counted in its summary.
const SKIPPED_WARNED: usize = 10;

async fn poll_within(
    resolver: &ConfigResolver,
    store: &InvalidTokenStore,
    domain: &str,
    settings: &DeliverySettings,
    limits: PollLimits,
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
    let mut count = 0;
    let mut skipped = 0;
    let read = async {
        let (mut stream, _) =
            connect_tls(&endpoint, settings.tls.clone(), settings.connect_timeout)
                .await
                .map_err(|e| service(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            let idle = limits.idle_after(count);
            let n = match tokio::time::timeout(idle, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) => n,
                // The service closed TCP without TLS close_notify: the end of its list all the same (a tuple cut
                // off there is reported below, as at any end of stream).
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Ok(Err(e)) => return Err(service(e.to_string())),
                Err(_) => {
                    return Err(service(format!(
                        "nothing came for {:.0} s (after {count} records)",
                        idle.as_secs_f64()
                    )));
                }
            };
            loop {
                match next_tuple(&mut buf).map_err(&service)? {
                    Tuple::Partial => break,
                    Tuple::Token { timestamp, token } => {
                        let token =
                            DeviceToken::from_bytes(token).map_err(|e| service(e.to_string()))?;
                        store.record(InvalidTokenEntry {
                            domain: domain.to_owned(),
                            token: token.to_hex(),
                            reason: "feedback".into(),
                            timestamp_ms: u64::from(timestamp) * 1000,
                            learnt_ms: 0,
                            source: "feedback".into(),
                            timestamp_from_apns: true,
                        });
                        count += 1;
                    }
                    Tuple::Skipped { len } => {
                        skipped += 1;
                        if skipped <= SKIPPED_WARNED {
                            tracing::warn!(
                                domain,
                                binding = &*settings.binding,
                                "feedback service {endpoint}: skipping a record with a {len}-byte token (tokens are \
                                 1 to {MAX_TOKEN_LEN} bytes)"
                            );
                        }
                    }
                }
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
    let result = tokio::time::timeout(limits.total, read)
        .await
        .unwrap_or_else(|_| {
            Err(service(format!(
                "the list took longer than {:.0} s (after {count} records)",
                limits.total.as_secs_f64()
            )))
        });
    if skipped > 0 {
        tracing::warn!(
            domain,
            binding = &*settings.binding,
            "feedback service {endpoint}: {skipped} records skipped for a token of no possible length"
        );
    }
    // The service forgot what it listed: what was recorded goes to disk before the poll counts as done (on a
    // failing disk the entries wait in memory and are written once it takes writes again).
    if count > 0
        && let Err(e) = store.sync().await
    {
        tracing::warn!(domain, binding = &*settings.binding, "feedback poll: {e}");
    }
    result
}

/// When a (binding, domain) is polled next: an interval after the start of its last poll that succeeded; after a
/// failure sooner, [`RETRY_FIRST`] after it ended, doubling with each failure in a row up to [`RETRY_MAX`] (and
/// never later than the interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    /// When the last poll began, and when it ended.
    began: Instant,
    ended: Instant,
    /// Failed polls in a row.
    failures: u32,
}

/// How long after a failed poll the next is tried, the first time.
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// The longest wait after failed polls in a row.
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

impl Schedule {
    fn after(began: Instant, ended: Instant, ok: bool, before: Option<&Schedule>) -> Schedule {
        Schedule {
            began,
            ended,
            failures: if ok {
                0
            } else {
                before.map_or(0, |s| s.failures).saturating_add(1)
            },
        }
    }

    /// Whether the next poll is due at `now`, polling every `interval`.
    fn due(&self, now: Instant, interval: Duration) -> bool {
        if self.failures == 0 {
            return now.saturating_duration_since(self.began) >= interval;
        }
        let backoff = RETRY_FIRST
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(RETRY_MAX)
            .min(interval);
        now.saturating_duration_since(self.ended) >= backoff
    }
}

/// Polls every configured domain whose `apn_feedback_interval` is set, from every binding that reaches APNs
/// differently ([`ConfigResolver::distinct_bindings`]), each (binding, domain) on its own schedule with the
/// interval that binding resolves ([`Schedule`]: a failed poll is tried again sooner), reading the configuration
/// in force at each round (so a reload takes effect). Runs until the task is dropped.
/// How often entries past `invalid_token_retention` are dropped.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// Drops the entries herald last learnt of longer ago than `invalid_token_retention` (read at every round, so a
/// reload applies it; 0 keeps every entry), off the async threads.
/// Drops the entries past `invalid_token_retention` every [`EXPIRY_EVERY`], with the configuration in force.
async fn run_expiry(resolver: Arc<ConfigResolver>, store: Arc<InvalidTokenStore>) {
    let mut tick = tokio::time::interval(EXPIRY_EVERY);
    loop {
        tick.tick().await;
        if !expire_old_entries(&resolver.config(), &store).await {
            return;
        }
    }
}

/// Returns false when the runtime is stopping.
async fn expire_old_entries(config: &herald_conf::Config, store: &Arc<InvalidTokenStore>) -> bool {
    let retention = config
        .eval_id(
            &herald_conf::ScopePath::global(),
            herald_conf::Opt::InvalidTokenRetention,
        )
        .as_int()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    if retention == 0 {
        return true;
    }
    let cutoff_ms = crate::queue::message::unix_now()
        .saturating_sub(retention)
        .saturating_mul(1000);
    let store = store.clone();
    let Some(gone) = crate::queue::run_blocking(move || store.expire(cutoff_ms)).await else {
        return false;
    };
    if gone > 0 {
        tracing::info!(
            "{gone} invalid-token entries left the store: learnt more than {retention} s ago \
             (invalid_token_retention)"
        );
    }
    true
}

pub async fn run_poller(resolver: Arc<ConfigResolver>, store: Arc<InvalidTokenStore>) {
    let mut schedules: HashMap<(String, String), Schedule> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // On a task of its own: a poll may take up to an hour (a slow list), and the retention is checked every minute.
    tokio::spawn(run_expiry(resolver.clone(), store.clone()));
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
                let began = Instant::now();
                if schedules.get(&key).is_some_and(|s| !s.due(began, interval)) {
                    continue;
                }
                let binding = &*settings.binding;
                let polled = poll_from(&resolver, &store, domain, &settings).await;
                match &polled {
                    Ok(n) => {
                        tracing::info!(domain, binding, tokens = n, "feedback service polled")
                    }
                    Err(e) => tracing::warn!(binding, "feedback poll: {e}"),
                }
                let next =
                    Schedule::after(began, Instant::now(), polled.is_ok(), schedules.get(&key));
                schedules.insert(key, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_sim::{CertVariant, Pki, SimConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOPIC: &str = "com.example.feedback";
    const DOMAIN: &str = "legacy.example";

    /// `invalid_token_retention` drops the entries herald last learnt of longer ago than it; 0 keeps them all.
    #[tokio::test]
    async fn entries_past_the_retention_leave_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InvalidTokenStore::open(&dir.path().join("t.jsonl"), None).unwrap());
        let entry = |fill: char| crate::tokens::InvalidTokenEntry {
            domain: "apps.example".into(),
            token: fill.to_string().repeat(64),
            reason: "Unregistered".into(),
            timestamp_ms: 1_000,
            learnt_ms: 0,
            source: "apns".into(),
            timestamp_from_apns: true,
        };
        let now_ms = crate::queue::message::unix_now() * 1000;
        assert!(store.record_learnt(entry('a'), true, 1_000));
        assert!(store.record_learnt(entry('b'), true, now_ms));
        let config = |retention: u64| {
            herald_conf::Config::parse_str(
                "t.conf",
                &format!("invalid_token_retention = {retention}\n"),
            )
            .unwrap()
        };
        expire_old_entries(&config(0), &store).await;
        assert_eq!(store.len(), 2, "0 keeps every entry");
        expire_old_entries(&config(3600), &store).await;
        assert_eq!(store.len(), 1);
        assert_eq!(store.list(None, 0)[0].token, "b".repeat(64));
    }

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

    /// A feedback service on 127.0.0.1 that writes each chunk after its pause to the first connection; then ends
    /// the list (closing TCP without close_notify), or with `hold` keeps the connection open and silent until the
    /// client goes away.
    async fn scripted_service(
        pki: &Pki,
        chunks: Vec<(Duration, Vec<u8>)>,
        hold: bool,
    ) -> std::net::SocketAddr {
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
            for (pause, bytes) in chunks {
                // A slow link: the pause is the service's pace, not a wait for the test.
                tokio::time::sleep(pause).await;
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            if hold {
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        });
        addr
    }

    /// One record with a token of `len` bytes.
    fn record_of_len(timestamp: u32, len: usize) -> Vec<u8> {
        let mut t = timestamp.to_be_bytes().to_vec();
        t.extend_from_slice(&(len as u16).to_be_bytes());
        t.extend(std::iter::repeat_n(0x5a, len));
        t
    }

    /// The tokens of `DOMAIN` in the store's file as it is on disk now (not as the store holds them).
    fn tokens_on_disk(path: &std::path::Path) -> Vec<String> {
        let mut tokens: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<InvalidTokenEntry>(l).unwrap().token)
            .collect();
        tokens.sort();
        tokens
    }

    /// A record whose token cannot be one (0 bytes, or more than 100) is skipped, and the records after it are
    /// read and recorded: the service forgets the whole list once read. The records are on disk when the poll
    /// returns.
    #[tokio::test]
    async fn a_record_of_no_possible_length_is_skipped_and_the_list_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let path = dir.path().join("tokens");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let list = [
            tuple(1_700_000_000, 0xaa),
            record_of_len(1_700_000_001, 0),
            record_of_len(1_700_000_002, 150),
            tuple(1_700_000_003, 0xbb),
        ]
        .concat();
        let service = scripted_service(&pki, vec![(Duration::ZERO, list)], false).await;
        let polled = poll_once(&resolver(&pki, service), &store, DOMAIN).await;
        assert_eq!(polled.unwrap(), 2);
        assert_eq!(tokens_on_disk(&path), ["aa".repeat(32), "bb".repeat(32)]);
    }

    /// A record declaring a length no record comes near means the stream is out of step: the poll ends with an
    /// error, keeping (on disk) what came before.
    #[tokio::test]
    async fn a_stream_out_of_step_ends_the_poll_keeping_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let path = dir.path().join("tokens");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let list = [
            tuple(1_700_000_000, 0xaa),
            record_of_len(1_700_000_001, 5000),
        ]
        .concat();
        let service = scripted_service(&pki, vec![(Duration::ZERO, list)], false).await;
        let err = poll_once(&resolver(&pki, service), &store, DOMAIN)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("5000-byte token") && err.contains("out of step"),
            "{err}"
        );
        assert_eq!(tokens_on_disk(&path), ["aa".repeat(32)]);
    }

    /// A long list over a slow link is read to its end however long it takes in all, as long as bytes keep coming
    /// (here the whole list takes longer than the wait allowed between two reads).
    #[tokio::test]
    async fn a_slow_list_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let store = InvalidTokenStore::open(&dir.path().join("tokens"), None).unwrap();
        let idle = Duration::from_secs(2);
        let chunks: Vec<(Duration, Vec<u8>)> = (0..25u8)
            .map(|i| (Duration::from_millis(100), tuple(1_700_000_000, i)))
            .collect();
        let service = scripted_service(&pki, chunks, false).await;
        let resolver = resolver(&pki, service);
        let settings = resolver.build(DOMAIN).unwrap();
        let limits = PollLimits {
            idle,
            total: Duration::from_secs(600),
            ..PollLimits::default()
        };
        let began = Instant::now();
        let polled = poll_within(&resolver, &store, DOMAIN, &settings, limits).await;
        assert_eq!(polled.unwrap(), 25);
        // The pauses alone add up to more than the idle limit: a limit on the whole poll would have cut it.
        assert!(began.elapsed() > idle);
    }

    /// A service that goes silent without closing is given up once nothing came for the idle limit; what it
    /// listed before is kept, on disk.
    #[tokio::test]
    async fn a_silent_service_is_given_up_after_the_idle_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let path = dir.path().join("tokens");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let service = scripted_service(
            &pki,
            vec![(Duration::ZERO, tuple(1_700_000_000, 0xaa))],
            true,
        )
        .await;
        let resolver = resolver(&pki, service);
        let settings = resolver.build(DOMAIN).unwrap();
        // Generous until the first record came (the TLS handshake, then the record, however slowly the test
        // runs); short only for the silence after it, which the test waits out.
        let limits = PollLimits {
            idle: Duration::from_millis(300),
            total: Duration::from_secs(600),
            first_idle: Some(Duration::from_secs(60)),
        };
        let err = poll_within(&resolver, &store, DOMAIN, &settings, limits)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nothing came for") && err.contains("after 1 records"),
            "{err}"
        );
        assert_eq!(tokens_on_disk(&path), ["aa".repeat(32)]);
    }

    /// A poll that succeeded is followed by the next one an interval after it began; a failed one is tried again
    /// sooner, 30 s after it ended, then twice as long after each failure in a row, up to 30 minutes (never later
    /// than the interval).
    #[test]
    fn a_failed_poll_is_tried_again_sooner_with_a_bounded_backoff() {
        let day = Duration::from_secs(24 * 3600);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let ok = Schedule::after(t0, at(5), true, None);
        assert!(!ok.due(at(3600), day));
        assert!(ok.due(at(24 * 3600), day));
        let mut s = Schedule::after(t0, at(5), false, Some(&ok));
        assert_eq!(s.failures, 1);
        assert!(!s.due(at(34), day));
        assert!(s.due(at(35), day));
        let mut waits = Vec::new();
        let mut ended = at(35);
        for _ in 0..10 {
            s = Schedule::after(ended, ended, false, Some(&s));
            let wait = (1..=day.as_secs())
                .find(|&w| s.due(ended + Duration::from_secs(w), day))
                .unwrap();
            waits.push(wait);
            ended += Duration::from_secs(wait);
        }
        assert_eq!(
            waits,
            [60, 120, 240, 480, 960, 1800, 1800, 1800, 1800, 1800]
        );
        // Never later than the interval.
        assert!(s.due(ended + Duration::from_secs(60), Duration::from_secs(60)));
        // A success starts the interval again.
        let back = Schedule::after(ended, at(99_999), true, Some(&s));
        assert_eq!(back.failures, 0);
        assert!(!back.due(ended + Duration::from_secs(1800), day));
    }
}
