//! Live Activity channel management through herald (docs/apns-protocol.md#broadcast, docs/api.md "Channels"):
//! create, read, delete and list a domain's broadcast channels, synchronously, against the domain's management
//! route (`apn_channel_route`, else Apple's management host for the environment of the domain's route) with the
//! domain's credentials (its client certificate or its provider key, the same TLS configuration and token cache
//! as delivery).
//!
//! [`ChannelManager`] keeps one HTTP/2 connection per domain and opens it again when it closed or when the
//! domain's route or credentials changed (a reload). It counts every operation per domain, operation and result
//! for the metrics. The REST routes are in [`api`]; the console's `channels DOMAIN` calls [`ChannelManager::list`].

pub mod api;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_apns::broadcast::request::bundle_for_path;
use herald_apns::broadcast::{
    BroadcastClient, BroadcastClientError, ChannelId, ChannelInfo, StoragePolicy,
};
use herald_apns::client::connect::Endpoint;
use herald_apns::outcome::FailureClass;
use herald_apns::provider_token::ProviderTokenCache;
use herald_conf::{Opt, RouteProtocol, ScopePath, Value};

use crate::delivery::ConfigResolver;

/// Bounds connecting to the management host and each call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Apple's channel management hosts (docs/apns-protocol.md#broadcast).
pub const SANDBOX_MANAGEMENT: (&str, u16) = ("api-manage-broadcast.sandbox.push.apple.com", 2195);
pub const PRODUCTION_MANAGEMENT: (&str, u16) = ("api-manage-broadcast.push.apple.com", 2196);

/// The management host for a domain whose device route goes to `device_host`: Apple's sandbox management host
/// for a sandbox or development host, the production one for any other `*.push.apple.com` host, `None` for a
/// host that is not Apple's (a simulator, a proxy: `apn_channel_route` must say where).
pub fn default_management_host(device_host: &str) -> Option<(&'static str, u16)> {
    let host = device_host.to_ascii_lowercase();
    if !host.ends_with(".push.apple.com") {
        return None;
    }
    if host.contains("sandbox") || host.contains("development") {
        Some(SANDBOX_MANAGEMENT)
    } else {
        Some(PRODUCTION_MANAGEMENT)
    }
}

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The domain cannot manage channels as configured (unknown, not APNs, no bundle id, no management route,
    /// unusable credentials).
    #[error("domain {domain:?} cannot manage channels: {reason}")]
    Domain { domain: String, reason: String },
    /// The management host refused the call, could not be reached, or answered something unusable.
    #[error("channel management of domain {domain} at {endpoint}: {source}")]
    Apns {
        domain: String,
        endpoint: String,
        #[source]
        source: BroadcastClientError,
    },
    /// A create whose request went out and got no usable answer (none within [`CALL_TIMEOUT`], the connection
    /// lost before it came, or an unreadable one): APNs may have created the channel, so it is not to be sent
    /// again blindly (a second channel would be made, the first orphaned, both counting toward Apple's limit).
    #[error(
        "channel management of domain {domain} at {endpoint}: create sent, outcome unknown: {source}; the channel \
         may have been created all the same: list the domain's channels (GET /api/v1/channels?domain={domain}) \
         before creating one again"
    )]
    CreateUncertain {
        domain: String,
        endpoint: String,
        #[source]
        source: BroadcastClientError,
    },
}

/// Whether a create that failed with `e` may have been done at APNs: its request went out and no answer was
/// read (a timeout, a connection or stream lost other than by a refusal APNs guarantees unprocessed, an answer
/// herald could not read). A create that never left (no connection), or that APNs answered, is certain.
fn create_may_be_done(e: &BroadcastClientError) -> bool {
    match e {
        BroadcastClientError::Timeout { .. } | BroadcastClientError::BadAnswer(_) => true,
        BroadcastClientError::Http { .. } => !e.not_processed(),
        BroadcastClientError::Connection(_)
        | BroadcastClientError::Request(_)
        | BroadcastClientError::Rejected { .. } => false,
    }
}

impl ChannelError {
    /// The HTTP status of the REST answer: the caller's mistakes are 4xx (an unknown channel 404, the channel
    /// limit 409, broadcast not enabled for the app 403, other APNs 400s 400); APNs refusing herald's own request
    /// or credentials, or answering nonsense, is 502; APNs unreachable, slow or asking to retry later is 503. A
    /// create whose outcome is unknown is 504 when no answer came in time, else 502: never 503, which invites a
    /// retry that could make a second channel.
    pub fn http_status(&self) -> u16 {
        let source = match self {
            ChannelError::Domain { .. } => return 400,
            ChannelError::CreateUncertain { source, .. } => {
                return match source {
                    BroadcastClientError::Timeout { .. } => 504,
                    _ => 502,
                };
            }
            ChannelError::Apns { source, .. } => source,
        };
        match source {
            BroadcastClientError::Rejected {
                status,
                reason,
                class,
            } => match reason.as_str() {
                "ChannelNotRegistered" => 404,
                "CannotCreateChannelConfig" => 409,
                "FeatureNotEnabled" => 403,
                // The path's bundle id comes from the domain's topic: a push-type suffix on it is the
                // configuration's fault, not the caller's.
                "TopicDisallowed" => 502,
                _ if *class == FailureClass::Transient => 503,
                _ if *status == 400 => 400,
                _ => 502,
            },
            BroadcastClientError::Request(_) => 400,
            BroadcastClientError::BadAnswer(_) => 502,
            BroadcastClientError::Connection(_)
            | BroadcastClientError::Http { .. }
            | BroadcastClientError::Timeout { .. } => 503,
        }
    }

    /// APNs' status and reason, when APNs answered.
    pub fn apns(&self) -> Option<(u16, &str)> {
        match self {
            ChannelError::Apns {
                source: BroadcastClientError::Rejected { status, reason, .. },
                ..
            } => Some((*status, reason)),
            _ => None,
        }
    }

    /// Whether the operation was a create that APNs may have done all the same ([`ChannelError::CreateUncertain`]).
    pub fn may_exist(&self) -> bool {
        matches!(self, ChannelError::CreateUncertain { .. })
    }

    /// The `result` label of the operation counter.
    fn result(&self) -> String {
        match self {
            ChannelError::Domain { .. } => "not_configured".into(),
            ChannelError::Apns { source, .. } | ChannelError::CreateUncertain { source, .. } => {
                match source {
                    BroadcastClientError::Rejected { reason, .. } => reason.clone(),
                    BroadcastClientError::Request(_) => "bad_request".into(),
                    BroadcastClientError::BadAnswer(_) => "bad_answer".into(),
                    BroadcastClientError::Timeout { .. } => "timeout".into(),
                    BroadcastClientError::Connection(_) | BroadcastClientError::Http { .. } => {
                        "unreachable".into()
                    }
                }
            }
        }
    }
}

/// Where and as whom a domain's management calls go.
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    pub(crate) bundle_id: String,
    tls: Arc<rustls::ClientConfig>,
    auth: Option<ProviderTokenCache>,
    /// The domain's retry schedule (broadcasts are retried by it).
    pub(crate) retry: crate::model::retry::RetryPolicy,
}

impl Target {
    /// A new connection to this target.
    pub(crate) async fn connect(
        &self,
    ) -> Result<BroadcastClient, herald_apns::client::ConnectionError> {
        BroadcastClient::connect(
            &self.endpoint,
            self.tls.clone(),
            self.auth.clone(),
            CALL_TIMEOUT,
        )
        .await
    }
}

impl Target {
    /// Whether a connection opened for `other` serves this target too.
    pub(crate) fn same_connection(&self, other: &Target) -> bool {
        self.endpoint == other.endpoint
            && Arc::ptr_eq(&self.tls, &other.tls)
            && match (&self.auth, &other.auth) {
                (None, None) => true,
                (Some(a), Some(b)) => a.is_same_cache(b),
                _ => false,
            }
    }
}

/// Which of a domain's APNs hosts a target is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Channel management (`apn_channel_route`).
    Management,
    /// Broadcast sends (`apn_broadcast_route`).
    Broadcast,
}

impl Purpose {
    fn option(self) -> Opt {
        match self {
            Purpose::Management => Opt::ApnChannelRoute,
            Purpose::Broadcast => Opt::ApnBroadcastRoute,
        }
    }

    fn option_name(self) -> &'static str {
        match self {
            Purpose::Management => "apn_channel_route",
            Purpose::Broadcast => "apn_broadcast_route",
        }
    }

    /// Apple's host for this purpose when the domain's device route goes to `device_host`, `None` when that is not
    /// an Apple host. Broadcasts go to the device-push hosts themselves (docs/apns-protocol.md#broadcast).
    fn default_host(self, device_host: &str, device_port: u16) -> Option<(String, u16)> {
        match self {
            Purpose::Management => {
                default_management_host(device_host).map(|(h, p)| (h.to_owned(), p))
            }
            Purpose::Broadcast => device_host
                .to_ascii_lowercase()
                .ends_with(".push.apple.com")
                .then(|| (device_host.to_owned(), device_port)),
        }
    }
}

/// The management target of `domain` under the configuration in force. Reads credential files: call it off async
/// threads.
fn resolve(resolver: &ConfigResolver, domain: &str) -> Result<Target, String> {
    resolve_for(resolver, domain, Purpose::Management)
}

/// The target of `domain` for `purpose`, with the domain's credentials (docs/apns-protocol.md#broadcast). Reads
/// credential files: call it off async threads.
pub(crate) fn resolve_for(
    resolver: &ConfigResolver,
    domain: &str,
    purpose: Purpose,
) -> Result<Target, String> {
    let creds = resolver
        .http2_credentials(domain)
        .map_err(|e| e.to_string())?;
    let d = &creds.settings;
    let config = resolver.config();
    let name = purpose.option_name();
    let endpoint = match config.eval_opt(&ScopePath::domain(domain), purpose.option()) {
        Ok(Value::Routes(routes)) if !routes.is_empty() => {
            let route = &routes[0];
            if route.protocol != RouteProtocol::Http2 {
                return Err(format!(
                    "{name} {route} is not an https:// route (channel management and broadcasts are HTTP/2)"
                ));
            }
            Endpoint::new(route.host.clone(), route.port)
        }
        _ => {
            let route = d.routes.first().ok_or_else(|| {
                format!("no routes are configured and {name} is not set; set {name}")
            })?;
            // Broadcasts go to the device-push host itself, which must then speak HTTP/2: a binary gateway
            // (`apn://…`) does not serve them. Management hosts are Apple's own, whatever the route speaks.
            if purpose == Purpose::Broadcast && route.protocol != RouteProtocol::Http2 {
                return Err(format!(
                    "{name} is not set and the domain's route {route} speaks the binary protocol, which carries no \
                     broadcasts (they are HTTP/2 only); set {name} to an https:// route"
                ));
            }
            let (host, port) = purpose
                .default_host(&route.host, route.port)
                .ok_or_else(|| {
                    format!(
                        "{name} is not set and the domain's route {route} is not an Apple host; set {name} to \
                         the host that serves it"
                    )
                })?;
            Endpoint::new(host, port)
        }
    }
    .bound_to(d.bind_address);
    let topic = match &d.apn_topic {
        Some(t) => t.clone(),
        None => {
            let identity = crate::delivery::load_identity(d)
                .map(|(_, identity)| identity)
                .ok_or("no apn_topic and no client certificate to take the bundle id from; set apn_topic")?;
            let info = identity.and_then(|i| i.info().map_err(|e| e.to_string()))?;
            info.default_topic().map_err(|e| e.to_string())?.to_owned()
        }
    };
    let bundle_id = bundle_for_path(&topic)
        .map_err(|e| format!("apn_topic: {e}"))?
        .to_owned();
    Ok(Target {
        endpoint,
        bundle_id,
        tls: creds.tls,
        auth: creds.auth,
        retry: crate::delivery::retry_policy(d),
    })
}

/// One management call.
enum Call {
    Create(StoragePolicy),
    Read(ChannelId),
    Delete(ChannelId),
    List,
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::Create(_) => "create",
            Call::Read(_) => "read",
            Call::Delete(_) => "delete",
            Call::List => "list",
        }
    }
}

/// What a call answered.
enum Done {
    Created(ChannelId),
    Info(ChannelInfo),
    Deleted,
    Listed(Vec<ChannelId>),
}

async fn perform(
    client: &BroadcastClient,
    bundle: &str,
    call: &Call,
) -> Result<Done, BroadcastClientError> {
    Ok(match call {
        Call::Create(policy) => Done::Created(client.create_channel(bundle, *policy).await?),
        Call::Read(id) => Done::Info(client.read_channel(bundle, id).await?),
        Call::Delete(id) => {
            client.delete_channel(bundle, id).await?;
            Done::Deleted
        }
        Call::List => Done::Listed(client.list_channels(bundle).await?),
    })
}

/// A domain's open connection and what it was opened for.
struct Cached {
    target: Target,
    client: BroadcastClient,
}

/// A created channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub bundle_id: String,
    pub channel: ChannelId,
}

/// Channel management for every domain of the configuration in force.
pub struct ChannelManager {
    resolver: Arc<ConfigResolver>,
    conns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    /// Operations by (domain, operation, result).
    counts: Mutex<BTreeMap<(String, &'static str, String), u64>>,
}

impl ChannelManager {
    pub fn new(resolver: Arc<ConfigResolver>) -> Arc<ChannelManager> {
        Arc::new(ChannelManager {
            resolver,
            conns: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Creates a Live Activity channel with `policy` for `domain`'s app.
    pub async fn create(
        &self,
        domain: &str,
        policy: StoragePolicy,
    ) -> Result<Created, ChannelError> {
        let (bundle_id, done) = self.run(domain, Call::Create(policy)).await?;
        match done {
            Done::Created(channel) => Ok(Created { bundle_id, channel }),
            _ => Err(self.odd(domain, "create")),
        }
    }

    /// A channel's storage policy and push type.
    pub async fn read(&self, domain: &str, id: &ChannelId) -> Result<ChannelInfo, ChannelError> {
        match self.run(domain, Call::Read(id.clone())).await?.1 {
            Done::Info(info) => Ok(info),
            _ => Err(self.odd(domain, "read")),
        }
    }

    /// Deletes a channel (for good: APNs never reuses an id).
    pub async fn delete(&self, domain: &str, id: &ChannelId) -> Result<(), ChannelError> {
        match self.run(domain, Call::Delete(id.clone())).await?.1 {
            Done::Deleted => Ok(()),
            _ => Err(self.odd(domain, "delete")),
        }
    }

    /// Every channel of the domain's app in its environment, with the app's bundle id.
    pub async fn list(&self, domain: &str) -> Result<(String, Vec<ChannelId>), ChannelError> {
        match self.run(domain, Call::List).await? {
            (bundle, Done::Listed(ids)) => Ok((bundle, ids)),
            _ => Err(self.odd(domain, "list")),
        }
    }

    fn odd(&self, domain: &str, op: &str) -> ChannelError {
        ChannelError::Domain {
            domain: domain.to_owned(),
            reason: format!("internal error: {op} answered another operation"),
        }
    }

    /// Runs one call on the domain's connection (opened first if needed) and counts it. A read, delete or list
    /// whose connection turned out closed is tried once more on a new one; a create is not (it might have been
    /// done).
    async fn run(&self, domain: &str, call: Call) -> Result<(String, Done), ChannelError> {
        let domain = domain.trim().to_ascii_lowercase();
        let resolver = self.resolver.clone();
        let name = domain.clone();
        let target = tokio::task::spawn_blocking(move || resolve(&resolver, &name))
            .await
            .unwrap_or_else(|e| Err(format!("resolving the domain failed: {e}")))
            .map_err(|reason| ChannelError::Domain {
                domain: domain.clone(),
                reason,
            })?;
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(domain.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let bundle = target.bundle_id.clone();
        let endpoint = target.endpoint.to_string();
        let apns_err = |source| ChannelError::Apns {
            domain: domain.clone(),
            endpoint: endpoint.clone(),
            source,
        };
        let result = async {
            let reusable = slot
                .as_ref()
                .is_some_and(|c| !c.client.is_closed() && c.target.same_connection(&target));
            let mut fresh = !reusable;
            if fresh {
                *slot = None;
                let client = target.connect().await.map_err(|e| apns_err(e.into()))?;
                *slot = Some(Cached { target, client });
            }
            loop {
                let Some(cached) = slot.as_ref() else {
                    return Err(apns_err(BroadcastClientError::BadAnswer(
                        "no connection".into(),
                    )));
                };
                let client = cached.client.clone();
                match perform(&client, &bundle, &call).await {
                    Err(BroadcastClientError::Http { .. })
                        if !fresh && !matches!(call, Call::Create(_)) =>
                    {
                        // The kept connection died under the call: once more on a new one.
                        let target = match slot.take() {
                            Some(c) => c.target,
                            None => continue,
                        };
                        let client = target.connect().await.map_err(|e| apns_err(e.into()))?;
                        *slot = Some(Cached { target, client });
                        fresh = true;
                    }
                    Err(e) => {
                        if !matches!(e, BroadcastClientError::Rejected { .. }) {
                            *slot = None;
                        }
                        return Err(apns_err(e));
                    }
                    Ok(done) => return Ok(done),
                }
            }
        }
        .await;
        // A create that went out and got no usable answer may have been done: say so, and not "retry later".
        let result = match result {
            Err(ChannelError::Apns {
                domain,
                endpoint,
                source,
            }) if matches!(call, Call::Create(_)) && create_may_be_done(&source) => {
                Err(ChannelError::CreateUncertain {
                    domain,
                    endpoint,
                    source,
                })
            }
            other => other,
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.result(),
        };
        match &result {
            Ok(_) => tracing::info!(%domain, operation = call.name(), "channel operation done"),
            Err(e) => {
                tracing::warn!(%domain, operation = call.name(), "channel operation failed: {e}")
            }
        }
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((domain.clone(), call.name(), outcome))
            .or_default() += 1;
        result.map(|done| (bundle, done))
    }

    /// Operations so far: (domain, operation, result, count), sorted.
    pub fn counts(&self) -> Vec<(String, &'static str, String, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((d, op, r), n)| (d.clone(), *op, r.clone(), *n))
            .collect()
    }

    /// The `herald_channel_operations_total` family in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP herald_channel_operations_total Channel management operations, by domain, operation (create, read, delete, list) and result (ok, an APNs reason, unreachable, timeout, bad_answer).\n\
             # TYPE herald_channel_operations_total counter\n",
        );
        for (domain, op, result, n) in self.counts() {
            let _ = writeln!(
                out,
                "herald_channel_operations_total{{domain=\"{}\",operation=\"{op}\",result=\"{}\"}} {n}",
                crate::metrics::escape(&domain),
                crate::metrics::escape(&result)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_device_hosts_map_to_their_management_hosts() {
        assert_eq!(
            default_management_host("api.sandbox.push.apple.com"),
            Some(SANDBOX_MANAGEMENT)
        );
        assert_eq!(
            default_management_host("api.development.push.apple.com"),
            Some(SANDBOX_MANAGEMENT)
        );
        assert_eq!(
            default_management_host("gateway.sandbox.push.apple.com"),
            Some(SANDBOX_MANAGEMENT)
        );
        assert_eq!(
            default_management_host("API.push.apple.com"),
            Some(PRODUCTION_MANAGEMENT)
        );
        assert_eq!(default_management_host("127.0.0.1"), None);
        assert_eq!(default_management_host("push.apple.com.example"), None);
    }

    fn rejected(status: u16, reason: &str) -> ChannelError {
        ChannelError::Apns {
            domain: "d".into(),
            endpoint: "h:1".into(),
            source: BroadcastClientError::Rejected {
                status,
                reason: reason.into(),
                class: herald_apns::broadcast::classify_broadcast(status, Some(reason)),
            },
        }
    }

    #[test]
    fn apns_answers_map_to_http_statuses() {
        assert_eq!(rejected(400, "ChannelNotRegistered").http_status(), 404);
        assert_eq!(
            rejected(400, "CannotCreateChannelConfig").http_status(),
            409
        );
        assert_eq!(rejected(400, "FeatureNotEnabled").http_status(), 403);
        assert_eq!(rejected(400, "BadChannelId").http_status(), 400);
        assert_eq!(rejected(403, "InvalidProviderToken").http_status(), 502);
        assert_eq!(rejected(403, "TopicMismatch").http_status(), 502);
        assert_eq!(rejected(400, "TopicDisallowed").http_status(), 502);
        assert_eq!(rejected(429, "TooManyRequests").http_status(), 503);
        assert_eq!(rejected(503, "ServiceUnavailable").http_status(), 503);
        assert_eq!(rejected(500, "InternalServerError").http_status(), 503);
        assert_eq!(
            rejected(400, "ChannelNotRegistered").apns(),
            Some((400, "ChannelNotRegistered"))
        );
        let timeout = ChannelError::Apns {
            domain: "d".into(),
            endpoint: "h:1".into(),
            source: BroadcastClientError::Timeout {
                host: "h".into(),
                secs: 10,
            },
        };
        assert_eq!(timeout.http_status(), 503);
        assert_eq!(timeout.apns(), None);
        assert_eq!(timeout.result(), "timeout");
        assert!(!timeout.may_exist());
        // A create sent and not answered may exist: 504 (no answer in time) or 502, never 503 (retry).
        let uncertain = |source| ChannelError::CreateUncertain {
            domain: "d".into(),
            endpoint: "h:1".into(),
            source,
        };
        let late = uncertain(BroadcastClientError::Timeout {
            host: "h".into(),
            secs: 10,
        });
        assert_eq!(late.http_status(), 504);
        assert_eq!(late.result(), "timeout");
        assert!(late.may_exist());
        assert!(late.to_string().contains("may have been created"), "{late}");
        let unreadable = uncertain(BroadcastClientError::BadAnswer("x".into()));
        assert_eq!(unreadable.http_status(), 502);
        assert!(create_may_be_done(&BroadcastClientError::Timeout {
            host: "h".into(),
            secs: 10
        }));
        assert!(!create_may_be_done(&BroadcastClientError::Rejected {
            status: 503,
            reason: "ServiceUnavailable".into(),
            class: FailureClass::Transient,
        }));
        let domain = ChannelError::Domain {
            domain: "d".into(),
            reason: "x".into(),
        };
        assert_eq!(domain.http_status(), 400);
    }
}
