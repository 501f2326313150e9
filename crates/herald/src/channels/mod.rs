//! Live Activity channel management through herald (docs/apns-protocol.md#broadcast, docs/api.md "Channels"):
//! create, read, delete and list a domain's broadcast channels, synchronously, against the domain's management
//! route (`apn_channel_route`, else Apple's management host for the environment of the domain's route) with the
//! domain's credentials (its client certificate or its provider key, the same TLS configuration and token cache
//! as delivery).
//!
//! [`ChannelManager`] keeps one HTTP/2 connection per domain ([`conns`]), opened on demand and again when it closed
//! or when the domain's route or credentials changed (a reload); a connection unused for the domain's `idle_timeout`
//! is closed and forgotten, and so is one whose domain a reload removed, and one that, not heard from for a while,
//! leaves the PING it is asked with before a call unanswered (the call goes out on a new one). It counts every
//! operation per domain, operation and result for the metrics. A call whose stream APNs refused unprocessed (`REFUSED_STREAM`) is made again at once on the same
//! connection, which stays (up to [`MAX_REFUSALS`] times). A call APNs did not process otherwise (never sent, above
//! a GOAWAY's last stream id, or still refused after those), one refused for a provider token that was renewed
//! since, and a read, delete or list whose kept connection died under it are made once more on a new connection; a
//! create that may have been done is not ([`ChannelError::CreateUncertain`]). The REST
//! routes are in [`api`]; the console's `channels DOMAIN` calls [`ChannelManager::list`].

pub mod api;
pub(crate) mod conns;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_apns::broadcast::request::bundle_for_path;
use herald_apns::broadcast::{
    BroadcastClient, BroadcastClientError, ChannelId, ChannelInfo, StoragePolicy, reason_label,
};
use herald_apns::client::connect::Endpoint;
use herald_apns::outcome::FailureClass;
use herald_apns::provider_token::ProviderTokenCache;
use herald_conf::{Opt, RouteProtocol, ScopePath, Value};

use crate::delivery::ConfigResolver;

/// Bounds connecting to the management host and each call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Times a call whose stream the host refused unprocessed (`REFUSED_STREAM`) is made again at once on the same
/// connection, before that connection is taken for one that failed it (see [`ChannelManager::run_on`]).
const MAX_REFUSALS: u32 = 3;

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
    /// The domain cannot manage channels now: its credentials cannot be read (a key or certificate file), or
    /// looking it up failed. Nothing was sent; retry later.
    #[error("domain {domain:?} cannot manage channels now: {reason}; retry later")]
    Unavailable { domain: String, reason: String },
    /// The management host refused the call, could not be reached, or answered something unusable.
    #[error("channel management of domain {domain} at {endpoint}: {source}")]
    Apns {
        domain: String,
        endpoint: String,
        #[source]
        source: BroadcastClientError,
    },
    /// The call waited [`CALL_TIMEOUT`] for the connection another call of the domain is opening (the host is slow
    /// to connect, or does not answer). Nothing was sent by this try; retry later.
    #[error(
        "channel management of domain {domain} at {endpoint}: waited {secs} s for the connection another call of the \
         domain is opening; retry later"
    )]
    ConnectionWait {
        domain: String,
        endpoint: String,
        secs: u64,
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

/// Whether a create that failed with `e` may have been done at APNs: its request was handed to the connection and
/// no answer was read (a timeout, a connection or stream lost other than by a refusal APNs guarantees unprocessed,
/// an answer herald could not read). A create that never left (no connection, or one that could not take the
/// request), or that APNs answered, is certain.
fn create_may_be_done(e: &BroadcastClientError) -> bool {
    match e {
        BroadcastClientError::Timeout { .. } | BroadcastClientError::BadAnswer(_) => true,
        BroadcastClientError::Http { .. } => !e.not_processed(),
        BroadcastClientError::Connection(_)
        | BroadcastClientError::NotSent { .. }
        | BroadcastClientError::TokenRetired { .. }
        | BroadcastClientError::Request(_)
        | BroadcastClientError::Rejected { .. } => false,
    }
}

/// Whether a call that failed with `e` is made once more, at once, on a new connection (`fresh`: the failed try
/// was on a connection opened for it):
/// - any call APNs did not process (never sent, its stream refused, or above the last stream id of a GOAWAY): it
///   was not done, a create included;
/// - any call answered `ExpiredProviderToken` once the token was renewed: it was refused, and APNs may no longer
///   serve the connection that answered (docs/apns-protocol.md §3.7); a token the cache kept would be refused again;
/// - a read, delete or list whose kept connection died under it (an idle connection APNs closed): a read or list
///   done twice does no harm, and a delete done by the first try is told by the second one's answer
///   ([`ChannelManager::run_on`]). A create is not: it might have been done, and a second one would make a second
///   channel.
fn try_again(call: &Call, e: &BroadcastClientError, fresh: bool) -> bool {
    e.not_processed()
        || e.token_expired() == Some(true)
        || (matches!(e, BroadcastClientError::Http { .. })
            && !fresh
            && !matches!(call, Call::Create(_)))
}

impl ChannelError {
    /// The HTTP status of the REST answer: the caller's mistakes are 4xx (an unknown channel 404, the channel
    /// limit 409, broadcast not enabled for the app 403, other APNs 400s 400); APNs refusing herald's own request
    /// or credentials, or answering nonsense, is 502; APNs unreachable, slow or asking to retry later, or the
    /// domain's credentials unreadable now, is 503. A
    /// create whose outcome is unknown is 504 when no answer came in time, else 502: never 503, which invites a
    /// retry that could make a second channel.
    pub fn http_status(&self) -> u16 {
        let source = match self {
            ChannelError::Domain { .. } => return 400,
            ChannelError::Unavailable { .. } | ChannelError::ConnectionWait { .. } => return 503,
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
            | BroadcastClientError::NotSent { .. }
            | BroadcastClientError::TokenRetired { .. }
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
            ChannelError::Unavailable { .. } => "unavailable".into(),
            // As the call opening the connection would be counted, its host unreachable in time.
            ChannelError::ConnectionWait { .. } => "unreachable".into(),
            ChannelError::Apns { source, .. } | ChannelError::CreateUncertain { source, .. } => {
                match source {
                    // A known reason, or one label for any other text the host sent (the error keeps the text).
                    BroadcastClientError::Rejected { reason, .. } => reason_label(reason).into(),
                    BroadcastClientError::Request(_) => "bad_request".into(),
                    BroadcastClientError::BadAnswer(_) => "bad_answer".into(),
                    BroadcastClientError::Timeout { .. } => "timeout".into(),
                    // The host was reached and refused the call's stream, unprocessed, every time it was sent.
                    BroadcastClientError::Http { .. } if source.stream_refused() => {
                        "refused".into()
                    }
                    BroadcastClientError::Connection(_)
                    | BroadcastClientError::NotSent { .. }
                    | BroadcastClientError::TokenRetired { .. }
                    | BroadcastClientError::Http { .. } => "unreachable".into(),
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
    /// The domain's `idle_timeout`: a kept connection unused for this long closes ([`conns`]); `None` for 0 (never).
    pub(crate) idle_timeout: Option<Duration>,
    /// The configuration in force when the target was resolved, read before anything of it: a connection opened
    /// for the target is checked against it ([`conns`]), so that a reload that came meanwhile is looked at.
    pub(crate) config: std::sync::Weak<herald_conf::Config>,
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

/// Why a domain's target could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// The configuration does not let the domain do it (unknown, not APNs, no route, no bundle id): the text says
    /// which option to set.
    Config(String),
    /// Its credentials cannot be read or used now (a key or certificate file: the operator's to fix, as for
    /// pushes), or the lookup itself failed: retry later.
    Unavailable(String),
}

impl From<String> for Unresolved {
    fn from(reason: String) -> Unresolved {
        Unresolved::Config(reason)
    }
}

impl From<&str> for Unresolved {
    fn from(reason: &str) -> Unresolved {
        Unresolved::Config(reason.to_owned())
    }
}

/// The management target of `domain` under the configuration in force. Reads credential files: call it off async
/// threads.
fn resolve(resolver: &ConfigResolver, domain: &str) -> Result<Target, Unresolved> {
    resolve_for(resolver, domain, Purpose::Management)
}

/// The target of `domain` for `purpose`, with the domain's credentials (docs/apns-protocol.md#broadcast). Reads
/// credential files: call it off async threads.
pub(crate) fn resolve_for(
    resolver: &ConfigResolver,
    domain: &str,
    purpose: Purpose,
) -> Result<Target, Unresolved> {
    // Read first: what follows may come from a configuration a reload put in force meanwhile, never an older one.
    let config = resolver.config();
    let creds = resolver.http2_credentials(domain).map_err(|e| match e {
        crate::queue::ResolveError::Credentials(_) => Unresolved::Unavailable(e.to_string()),
        other => Unresolved::Config(other.to_string()),
    })?;
    let d = &creds.settings;
    let name = purpose.option_name();
    let endpoint = match config.eval_opt(&ScopePath::domain(domain), purpose.option()) {
        Ok(Value::Routes(routes)) if !routes.is_empty() => {
            let route = &routes[0];
            if route.protocol != RouteProtocol::Http2 {
                return Err(Unresolved::Config(format!(
                    "{name} {route} is not an https:// route (channel management and broadcasts are HTTP/2)"
                )));
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
                return Err(Unresolved::Config(format!(
                    "{name} is not set and the domain's route {route} speaks the binary protocol, which carries no \
                     broadcasts (they are HTTP/2 only); set {name} to an https:// route"
                )));
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
            let info = identity
                .and_then(|i| i.info().map_err(|e| e.to_string()))
                .map_err(Unresolved::Unavailable)?;
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
        idle_timeout: (!d.idle_timeout.is_zero()).then_some(d.idle_timeout),
        config: Arc::downgrade(&config),
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

/// Which connection [`ChannelManager::connection`] gives.
#[derive(Clone, Copy)]
enum Connect<'a> {
    /// The kept one when it is open and for the same target, else a new one.
    Reuse,
    /// One other than this connection, which failed a call about to be made again: the kept one when it is another
    /// (opened since by a call that failed on this one too), open and for the same target, else a new one. Of the
    /// calls that failed on one connection together, the first opens a new connection and the others use it.
    Replace(&'a BroadcastClient),
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
    /// The kept connection of each domain ([`conns`]). A domain's lock is held only to take the connection or to
    /// open a new one, never for a call: calls of one domain share the connection (HTTP/2 streams) and run at once.
    conns: conns::Connections,
    /// Operations by (domain, operation, result).
    counts: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    /// How long a call waits for its domain's lock, held by a call opening the connection: [`CALL_TIMEOUT`] (less
    /// in tests).
    connect_wait: Duration,
}

impl ChannelManager {
    pub fn new(resolver: Arc<ConfigResolver>) -> Arc<ChannelManager> {
        Arc::new(ChannelManager {
            conns: conns::Connections::new(resolver.clone(), Purpose::Management, CALL_TIMEOUT),
            resolver,
            counts: Mutex::new(BTreeMap::new()),
            connect_wait: CALL_TIMEOUT,
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

    /// Runs one call on the domain's connection (opened first if needed) and counts it ([`ChannelManager::run_on`]).
    async fn run(&self, domain: &str, call: Call) -> Result<(String, Done), ChannelError> {
        let domain = domain.trim().to_ascii_lowercase();
        let resolver = self.resolver.clone();
        let name = domain.clone();
        let target = tokio::task::spawn_blocking(move || resolve(&resolver, &name))
            .await
            .unwrap_or_else(|e| {
                Err(Unresolved::Unavailable(format!(
                    "resolving the domain failed: {e}"
                )))
            })
            .map_err(|e| match e {
                Unresolved::Config(reason) => ChannelError::Domain {
                    domain: domain.clone(),
                    reason,
                },
                Unresolved::Unavailable(reason) => ChannelError::Unavailable {
                    domain: domain.clone(),
                    reason,
                },
            })?;
        self.run_on(&domain, target, call).await
    }

    /// Runs one call for `domain` (lowercase) on its connection to `target` (opened first if needed) and counts
    /// it. A call whose stream was refused is made again on the same connection, at most [`MAX_REFUSALS`] times in a
    /// row there. A failed call is made once more on a new connection when [`try_again`] says so: one opened since the
    /// failure, by this call or by another that failed on the same connection ([`Connect::Replace`]). A delete whose
    /// first try may have been done (its answer lost with the connection) and which the second try finds gone
    /// (`ChannelNotRegistered`) is done: APNs never reuses a channel id, so the channel the caller named is gone
    /// either way. The connection is dropped after any failure but an answer from APNs, and after an
    /// `ExpiredProviderToken` answer too. The call runs on the connection shared with the domain's other calls, not
    /// under its lock ([`ChannelManager::connection`]): a call the host leaves unanswered holds up no other.
    async fn run_on(
        &self,
        domain: &str,
        target: Target,
        call: Call,
    ) -> Result<(String, Done), ChannelError> {
        let domain = domain.to_owned();
        let target = Arc::new(target);
        let bundle = target.bundle_id.clone();
        let endpoint = target.endpoint.to_string();
        let apns_err = |source| ChannelError::Apns {
            domain: domain.clone(),
            endpoint: endpoint.clone(),
            source,
        };
        let result = async {
            let (mut client, mut fresh) = self
                .connection(&domain, &target, Connect::Reuse)
                .await?;
            // Whether the call was made again, and whether its first try may have been done at APNs.
            let mut again = false;
            let mut first_may_be_done = false;
            // Times in a row the call's stream was refused on the connection it is on.
            let mut refused = 0;
            loop {
                let e = match perform(&client, &bundle, &call).await {
                    Ok(done) => return Ok(done),
                    Err(e) => e,
                };
                // Its stream refused (`REFUSED_STREAM`: the host over its stream limit, or one it lowered): not
                // processed, a create included, and nothing said against the connection. Made again at once on it
                // while it is open, [`MAX_REFUSALS`] times at most; a connection that refuses it still is then
                // treated as one that failed it ([`try_again`]: one more try on a new connection), so that a host
                // refusing everything does not have the call sent again and again.
                if e.stream_refused() && refused < MAX_REFUSALS && !client.is_closed() {
                    refused += 1;
                    tracing::debug!(%domain, op = call.name(), "channel operation's stream refused unprocessed, made again on the same connection: {e}");
                    continue;
                }
                if first_may_be_done
                    && matches!(call, Call::Delete(_))
                    && e.reason() == Some("ChannelNotRegistered")
                {
                    tracing::debug!(%domain, "delete: its first try, unanswered, deleted the channel");
                    return Ok(Done::Deleted);
                }
                if again || !try_again(&call, &e, fresh) {
                    if !matches!(e, BroadcastClientError::Rejected { .. })
                        || e.token_expired().is_some()
                        || e.token_updates_refused()
                    {
                        self.conns.forget(&domain, &client).await;
                    }
                    return Err(apns_err(e));
                }
                let op = call.name();
                tracing::debug!(%domain, op, "channel operation made again on a new connection: {e}");
                first_may_be_done = matches!(e, BroadcastClientError::Http { .. }) && !e.not_processed();
                (client, fresh) = self
                    .connection(&domain, &target, Connect::Replace(&client))
                    .await?;
                again = true;
                refused = 0;
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

    /// The domain's connection for a call to `target` (see [`Connect`]), and whether it was opened for it. The
    /// domain's lock is held while the connection is taken or opened (so that calls at once open one between them),
    /// and waited for at most [`CALL_TIMEOUT`] ([`ChannelError::ConnectionWait`]): a host that hangs on connecting
    /// holds each waiter up once, not once per call queued before it. Nothing was sent when this fails.
    async fn connection(
        &self,
        domain: &str,
        target: &Arc<Target>,
        connect: Connect<'_>,
    ) -> Result<(conns::Lease, bool), ChannelError> {
        let failed = match connect {
            Connect::Reuse => None,
            Connect::Replace(failed) => Some(failed),
        };
        self.conns
            .get(domain, target, failed, Some(self.connect_wait))
            .await
            .map_err(|e| match e {
                conns::Unavailable::Wait { secs } => ChannelError::ConnectionWait {
                    domain: domain.to_owned(),
                    endpoint: target.endpoint.to_string(),
                    secs,
                },
                conns::Unavailable::Connect(source) => ChannelError::Apns {
                    domain: domain.to_owned(),
                    endpoint: target.endpoint.to_string(),
                    source,
                },
            })
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
            "# HELP herald_channel_operations_total Channel management operations, by domain, operation (create, read, delete, list) and result (ok, an APNs reason, unreachable, refused, timeout, bad_answer, not_configured, unavailable).\n\
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
    use herald_apns::provider_token::{MAX_REFRESH, ManualClock, SigningKey};
    use herald_sim::Pki;

    const TOPIC: &str = "com.example.manage";
    const DOMAIN: &str = "manage.example";
    const WAIT: Duration = Duration::from_secs(30);
    const NOT_REGISTERED: &str = r#"{"reason":"ChannelNotRegistered"}"#;

    /// What a [`ScriptedHost`] does with a request.
    #[derive(Debug, Clone)]
    enum Act {
        /// Answers `status`, with `apns-channel-id` when given, and `body` when not empty.
        Answer {
            status: u16,
            channel: Option<String>,
            body: &'static str,
        },
        /// Sends GOAWAY with this last stream id and closes the connection: a request above it was not processed.
        GoAway(u32),
        /// Closes the connection without an answer: the request may have been done.
        Close,
        /// Never answers the request; the connection goes on.
        Hang,
        /// Resets the request's stream with `REFUSED_STREAM` (not processed); the connection goes on.
        Refuse,
    }

    fn answer(status: u16, body: &'static str) -> Act {
        Act::Answer {
            status,
            channel: None,
            body,
        }
    }

    fn created(id: &str) -> Act {
        Act::Answer {
            status: 201,
            channel: Some(id.to_owned()),
            body: "",
        }
    }

    /// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1), the prefix's other bit 0.
    fn hpack_int(mut n: usize, out: &mut Vec<u8>) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }

    /// A management host on 127.0.0.1 (TLS with the test PKI's server certificate, ALPN `h2`) that speaks HTTP/2
    /// frame by frame: its SETTINGS first, then, once a request came in full, what the script says for it (the nth
    /// request of all, over its connections; the last entry for any beyond).
    struct ScriptedHost {
        port: u16,
        /// Requests per connection, in the order the connections came.
        streams: Arc<Mutex<Vec<usize>>>,
        /// The connections that ended, in the order they did: (which, whether the client sent GOAWAY first).
        ended: Arc<Mutex<Vec<(usize, bool)>>>,
        /// PINGs answered per connection, and the connections told to answer nothing more ([`ScriptedHost::silence`]).
        pings: Arc<Mutex<Vec<usize>>>,
        silenced: Arc<Mutex<Vec<usize>>>,
    }

    impl ScriptedHost {
        async fn start(m: &herald_sim::PkiManifest, script: Vec<Act>) -> ScriptedHost {
            let tls =
                herald_sim::TlsMaterial::from_files(&m.server_cert, &m.server_key, &m.ca_cert)
                    .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(
                herald_sim::tls::server_config(&tls, false, true).unwrap(),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let host = ScriptedHost {
                port: listener.local_addr().unwrap().port(),
                streams: Arc::default(),
                ended: Arc::default(),
                pings: Arc::default(),
                silenced: Arc::default(),
            };
            let streams = host.streams.clone();
            let ended = host.ended.clone();
            let (pings, silenced) = (host.pings.clone(), host.silenced.clone());
            let script = Arc::new(script);
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let conn = {
                        let mut streams = streams.lock().unwrap();
                        streams.push(0);
                        pings.lock().unwrap().push(0);
                        streams.len() - 1
                    };
                    let acceptor = acceptor.clone();
                    let (streams, script, next) = (streams.clone(), script.clone(), next.clone());
                    let ended = ended.clone();
                    let (pings, silenced) = (pings.clone(), silenced.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let goaway = std::sync::atomic::AtomicBool::new(false);
                            let watched = Watched {
                                streams: &streams,
                                pings: &pings,
                                silenced: &silenced,
                                goaway: &goaway,
                            };
                            let _ = serve(tls, &script, &next, conn, watched).await;
                            let goaway = goaway.load(std::sync::atomic::Ordering::SeqCst);
                            ended.lock().unwrap().push((conn, goaway));
                        }
                    });
                }
            });
            host
        }

        fn streams(&self) -> Vec<usize> {
            self.streams.lock().unwrap().clone()
        }

        fn ended(&self) -> Vec<(usize, bool)> {
            self.ended.lock().unwrap().clone()
        }

        fn pings(&self) -> Vec<usize> {
            self.pings.lock().unwrap().clone()
        }

        /// From now on, the `conn`th connection reads everything and answers nothing, PINGs included, and stays
        /// open: a connection a NAT dropped without a word.
        fn silence(&self, conn: usize) {
            self.silenced.lock().unwrap().push(conn);
        }
    }

    /// What a [`ScriptedHost`] connection reports, and is told.
    struct Watched<'a> {
        /// Requests per connection.
        streams: &'a Mutex<Vec<usize>>,
        /// PINGs answered per connection.
        pings: &'a Mutex<Vec<usize>>,
        /// The connections that answer nothing.
        silenced: &'a Mutex<Vec<usize>>,
        /// Set when the client sent GOAWAY.
        goaway: &'a std::sync::atomic::AtomicBool,
    }

    /// One connection of a [`ScriptedHost`], the `conn`th.
    async fn serve<S>(
        mut io: S,
        script: &[Act],
        next: &std::sync::atomic::AtomicUsize,
        conn: usize,
        watched: Watched<'_>,
    ) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const DATA: u8 = 0x0;
        const HEADERS: u8 = 0x1;
        const SETTINGS: u8 = 0x4;
        const PING: u8 = 0x6;
        const GOAWAY: u8 = 0x7;
        const END_STREAM: u8 = 0x1;
        const ACK: u8 = 0x1;
        const END_HEADERS: u8 = 0x4;
        let Watched {
            streams,
            pings,
            silenced,
            goaway,
        } = watched;
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = (payload.len() as u32).to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await?;
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        io.flush().await?;
        // Streams whose request is coming.
        let mut open = std::collections::HashSet::new();
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await?;
            if silenced.lock().unwrap().contains(&conn) {
                if kind == HEADERS {
                    streams.lock().unwrap()[conn] += 1;
                }
                if kind == GOAWAY {
                    goaway.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                continue;
            }
            let complete = match kind {
                PING if flags & ACK == 0 => {
                    io.write_all(&frame(PING, ACK, 0, &payload)).await?;
                    io.flush().await?;
                    pings.lock().unwrap()[conn] += 1;
                    false
                }
                SETTINGS if flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                    io.flush().await?;
                    false
                }
                HEADERS => {
                    streams.lock().unwrap()[conn] += 1;
                    flags & END_STREAM != 0 || !open.insert(stream)
                }
                DATA => flags & END_STREAM != 0 && open.remove(&stream),
                GOAWAY => {
                    goaway.store(true, std::sync::atomic::Ordering::SeqCst);
                    false
                }
                _ => false,
            };
            if !complete {
                continue;
            }
            let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match script[n.min(script.len() - 1)].clone() {
                Act::Answer {
                    status,
                    channel,
                    body,
                } => {
                    // `:status` as a literal without indexing (name index 8), `apns-channel-id` as one with a new
                    // name, no Huffman coding.
                    let mut block = vec![0x08, 3];
                    block.extend_from_slice(status.to_string().as_bytes());
                    if let Some(id) = channel {
                        block.push(0);
                        hpack_int(APNS_CHANNEL_ID_NAME.len(), &mut block);
                        block.extend_from_slice(APNS_CHANNEL_ID_NAME.as_bytes());
                        hpack_int(id.len(), &mut block);
                        block.extend_from_slice(id.as_bytes());
                    }
                    let end = if body.is_empty() { END_STREAM } else { 0 };
                    io.write_all(&frame(HEADERS, END_HEADERS | end, stream, &block))
                        .await?;
                    if !body.is_empty() {
                        io.write_all(&frame(DATA, END_STREAM, stream, body.as_bytes()))
                            .await?;
                    }
                    io.flush().await?;
                }
                Act::GoAway(last) => {
                    let payload = [&last.to_be_bytes()[..], &[0; 4]].concat();
                    io.write_all(&frame(GOAWAY, 0, 0, &payload)).await?;
                    io.shutdown().await?;
                    return Ok(());
                }
                Act::Close => return Ok(()),
                Act::Hang => {}
                Act::Refuse => {
                    const RST_STREAM: u8 = 0x3;
                    let refused_stream = 0x7u32.to_be_bytes();
                    io.write_all(&frame(RST_STREAM, 0, stream, &refused_stream))
                        .await?;
                    io.flush().await?;
                }
            }
        }
    }

    const APNS_CHANNEL_ID_NAME: &str = "apns-channel-id";

    /// A channel manager whose domain [`DOMAIN`] manages its channels, with token auth, at a [`ScriptedHost`].
    struct Fixture {
        _dir: tempfile::TempDir,
        pki: Pki,
        host: ScriptedHost,
        resolver: Arc<ConfigResolver>,
        manager: Arc<ChannelManager>,
    }

    impl Fixture {
        async fn new(script: Vec<Act>) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
            let m = &pki.manifest;
            let host = ScriptedHost::start(m, script).await;
            let text = format!(
                r#"
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{TOPIC}"
  apn_channel_route = "https://127.0.0.1:{port}"
}}
"#,
                port = host.port,
                ca = m.ca_cert.display(),
                p8 = m.token_key.p8.display(),
                kid = m.token_key.key_id,
                tid = m.token_key.team_id,
            );
            let config = herald_conf::Config::parse_str("herald.conf", &text).unwrap();
            let resolver = Arc::new(ConfigResolver::new(Arc::new(config)));
            Fixture {
                _dir: dir,
                pki,
                host,
                manager: ChannelManager::new(resolver.clone()),
                resolver,
            }
        }

        /// The domain's target with provider tokens from `auth`.
        fn target(&self, auth: &ProviderTokenCache) -> Target {
            Target {
                auth: Some(auth.clone()),
                ..resolve(&self.resolver, DOMAIN).unwrap()
            }
        }

        /// A token cache with the domain's key on `clock`.
        fn tokens(&self, clock: &ManualClock) -> ProviderTokenCache {
            let k = &self.pki.manifest.token_key;
            let key = SigningKey::from_p8_file(&k.p8, &k.key_id, &k.team_id).unwrap();
            ProviderTokenCache::with_clock(key, MAX_REFRESH, Arc::new(clock.clone())).unwrap()
        }
    }

    fn create() -> Call {
        Call::Create(StoragePolicy::MostRecentMessage)
    }

    /// Waits until `cond` holds, at most [`WAIT`].
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The domain's own target, with `idle_timeout`.
    fn idle_after(f: &Fixture, idle_timeout: Option<Duration>) -> Target {
        Target {
            idle_timeout,
            ..resolve(&f.resolver, DOMAIN).unwrap()
        }
    }

    const EMPTY_LIST: &str = r#"{"channels":[]}"#;

    /// A kept connection unused for the domain's `idle_timeout` is closed with GOAWAY and leaves the map; the next
    /// call opens a new one and is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unused_connection_closes_after_idle_timeout_and_the_next_call_opens_another() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        let idle = Some(Duration::from_millis(200));
        f.manager
            .run_on(DOMAIN, idle_after(&f, idle), Call::List)
            .await
            .unwrap();
        assert_eq!(f.manager.conns.domains(), [DOMAIN]);
        wait_for("the idle connection to close", || {
            f.host.ended() == [(0, true)] && f.manager.conns.domains().is_empty()
        })
        .await;
        tokio::time::timeout(
            WAIT,
            f.manager.run_on(DOMAIN, idle_after(&f, idle), Call::List),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(f.host.streams(), [1, 1], "requests per connection");
    }

    /// A connection a call holds is not closed for idleness however long the call takes, and one handed out is in
    /// use at once: a call is never given a connection being closed. Once the last call is done, the idle time
    /// counts from then.
    #[tokio::test]
    async fn a_connection_in_use_is_not_closed_for_idleness() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        let idle = Duration::from_secs(2);
        f.manager
            .run_on(DOMAIN, idle_after(&f, Some(idle)), Call::List)
            .await
            .unwrap();
        let target = Arc::new(idle_after(&f, Some(idle)));
        let (lease, fresh) = f
            .manager
            .conns
            .get(DOMAIN, &target, None, None)
            .await
            .unwrap();
        assert!(!fresh, "the kept connection is handed out");
        tokio::time::pause();
        tokio::time::sleep(idle * 5).await;
        assert_eq!(f.manager.conns.domains(), [DOMAIN], "closed while in use");
        assert!(!lease.is_closed());
        drop(lease);
        tokio::time::sleep(idle / 2).await;
        assert_eq!(f.manager.conns.domains(), [DOMAIN], "closed too soon");
        tokio::time::sleep(idle).await;
        assert!(f.manager.conns.domains().is_empty(), "kept while unused");
        tokio::time::resume();
        tokio::time::timeout(
            WAIT,
            f.manager
                .run_on(DOMAIN, idle_after(&f, Some(idle)), Call::List),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(f.host.streams(), [1, 1], "requests per connection");
    }

    /// A kept connection that died without a word (the host reads everything and answers nothing, PINGs included,
    /// and keeps the socket open), long before its `idle_timeout`, does not take the next call: nothing heard from
    /// it for the liveness threshold, it is asked with a PING, which goes unanswered, and it is closed and forgotten;
    /// the call goes out on a new connection, which is kept, and is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_connection_gone_silent_is_dropped_and_the_call_goes_out_on_a_new_one() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        let silence = Duration::from_millis(300);
        f.manager
            .conns
            .set_liveness(silence, Duration::from_millis(500));
        let idle = Some(Duration::from_secs(3600));
        let within = tokio::time::timeout(WAIT, async {
            f.manager
                .run_on(DOMAIN, idle_after(&f, idle), Call::List)
                .await
                .unwrap();
            f.host.silence(0);
            wait_for("the kept connection to be silent for the threshold", || {
                f.manager
                    .conns
                    .silent_for(DOMAIN)
                    .is_some_and(|s| s >= silence)
            })
            .await;
            f.manager
                .run_on(DOMAIN, idle_after(&f, idle), Call::List)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        within.await.expect("the calls took too long");
        assert_eq!(
            f.host.streams(),
            [1, 1],
            "nothing sent on the silent connection"
        );
        wait_for("the silent connection to be closed", || {
            f.host.ended() == [(0, true)]
        })
        .await;
        assert_eq!(
            f.manager.conns.domains(),
            [DOMAIN],
            "the new connection is kept"
        );
        assert_eq!(
            f.manager.counts(),
            [(DOMAIN.to_owned(), "list", "ok".to_owned(), 2)]
        );
    }

    /// A kept connection not heard from for the liveness threshold whose host answers the PING is handed out: the
    /// call goes out on it, and no connection is opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_connection_answering_its_ping_is_kept() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        let silence = Duration::from_millis(300);
        f.manager.conns.set_liveness(silence, CALL_TIMEOUT);
        let idle = Some(Duration::from_secs(3600));
        let within = tokio::time::timeout(WAIT, async {
            f.manager
                .run_on(DOMAIN, idle_after(&f, idle), Call::List)
                .await
                .unwrap();
            wait_for("the kept connection to be silent for the threshold", || {
                f.manager
                    .conns
                    .silent_for(DOMAIN)
                    .is_some_and(|s| s >= silence)
            })
            .await;
            f.manager
                .run_on(DOMAIN, idle_after(&f, idle), Call::List)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        within.await.expect("the calls took too long");
        assert_eq!(f.host.pings(), [1], "the connection was asked first");
        assert_eq!(f.host.streams(), [2], "both calls on the kept connection");
        assert_eq!(f.host.ended(), [], "no connection closed");
        assert_eq!(f.manager.conns.domains(), [DOMAIN]);
    }

    /// A reload that removes the domain closes its kept connection, even one that would never close for idleness
    /// (`idle_timeout = 0`), and the domain leaves the map.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_a_reload_removes_loses_its_connection() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        f.manager
            .run_on(DOMAIN, idle_after(&f, None), Call::List)
            .await
            .unwrap();
        assert_eq!(f.manager.conns.domains(), [DOMAIN]);
        let without = herald_conf::Config::parse_str("herald.conf", "").unwrap();
        f.resolver.replace(Arc::new(without));
        wait_for("the removed domain's connection to close", || {
            f.host.ended() == [(0, true)] && f.manager.conns.domains().is_empty()
        })
        .await;
    }

    /// A call whose target was resolved before a reload removed the domain, and that opens the domain's connection
    /// after it, does not keep that connection for good: the connection is checked against the configuration the
    /// target was resolved under, which the reload replaced, so its watch finds the domain gone and closes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_for_a_target_resolved_before_a_reload_is_checked_against_that_reload() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        let target = idle_after(&f, None);
        let without = herald_conf::Config::parse_str("herald.conf", "").unwrap();
        f.resolver.replace(Arc::new(without));
        f.manager.run_on(DOMAIN, target, Call::List).await.unwrap();
        wait_for("the removed domain's connection to close", || {
            f.host.ended() == [(0, true)] && f.manager.conns.domains().is_empty()
        })
        .await;
    }

    /// A connection attempt that fails while the kept connection's watch waits for the domain's lock (holding the
    /// domain's slot) leaves no empty slot in the map: the watch, finding its connection gone, removes it as the
    /// slot's last holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_connection_attempt_racing_the_watch_leaves_no_empty_slot() {
        let f = Fixture::new(vec![answer(200, EMPTY_LIST)]).await;
        f.manager
            .run_on(DOMAIN, idle_after(&f, None), Call::List)
            .await
            .unwrap();
        // A host that takes the connection and says nothing until told to close it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let accepted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepting = accepted.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            accepting.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = closed.await;
            drop(sock);
        });
        let elsewhere = Arc::new(Target {
            endpoint: Endpoint::new("127.0.0.1", port),
            ..idle_after(&f, None)
        });
        let conns = &f.manager.conns;
        let attempt = conns.get(DOMAIN, &elsewhere, None, None);
        let fail_it = async {
            // The attempt connecting (under the domain's lock), and three holding the slot: the map, the attempt
            // and the watch, waiting for that lock.
            let deadline = std::time::Instant::now() + WAIT;
            while !accepted.load(std::sync::atomic::Ordering::SeqCst)
                || conns.slot_holders(DOMAIN) != Some(3)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the watch never waited for the domain's lock"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            close.send(()).unwrap();
        };
        let (attempted, ()) = tokio::join!(attempt, fail_it);
        assert!(
            matches!(attempted, Err(conns::Unavailable::Connect(_))),
            "the attempt fails"
        );
        wait_for("the empty slot to leave the map", || {
            conns.domains().is_empty()
        })
        .await;
    }

    /// `ExpiredProviderToken` to a create: with a token old enough to renew, the create is made again on a new
    /// connection with the new token and done; with one the cache keeps (minted moments ago), nothing more goes out
    /// with it, the create is a transient failure (503, certain: not created), and the connection that answered is
    /// not used again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_token_is_followed_only_by_a_renewed_one_on_a_new_connection() {
        let within = tokio::time::timeout(WAIT, async {
            for (age, renewed) in [
                (Duration::from_secs(25 * 60), true),
                (Duration::ZERO, false),
            ] {
                let f = Fixture::new(vec![
                    answer(403, r#"{"reason":"ExpiredProviderToken"}"#),
                    created("YWJj"),
                ])
                .await;
                let clock = ManualClock::new(1_800_000_000);
                let auth = f.tokens(&clock);
                clock.advance(age);
                let result = f.manager.run_on(DOMAIN, f.target(&auth), create()).await;
                if renewed {
                    match result {
                        Ok((_, Done::Created(id))) => assert_eq!(id.as_str(), "YWJj"),
                        Ok(_) => panic!("another answer than a create's"),
                        Err(e) => panic!("{e}"),
                    }
                    assert_eq!(auth.mints(), 2);
                    assert_eq!(f.host.streams(), [1, 1], "one request per connection");
                } else {
                    let Err(e) = result else {
                        panic!("the refused token was sent again")
                    };
                    assert_eq!(e.apns(), Some((403, "ExpiredProviderToken")), "{e}");
                    assert_eq!(e.http_status(), 503, "{e}");
                    assert!(!e.may_exist(), "{e}");
                    assert_eq!(auth.mints(), 1);
                    assert_eq!(f.host.streams(), [1], "nothing more on that connection");
                    assert!(
                        f.manager
                            .run_on(DOMAIN, f.target(&auth), create())
                            .await
                            .is_ok(),
                        "the next create"
                    );
                    assert_eq!(
                        f.host.streams(),
                        [1, 1],
                        "the next create on a new connection"
                    );
                }
            }
        });
        within.await.expect("the test took too long");
    }

    /// A delete whose kept connection was lost under it (APNs may have deleted the channel, the answer never came)
    /// is made again on a new connection; `ChannelNotRegistered` to that retry means the first try deleted it: the
    /// delete is done. A delete APNs certainly did not process (above a GOAWAY's last stream id) keeps a
    /// `ChannelNotRegistered` to its retry: the channel did not exist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_whose_answer_was_lost_is_done_when_its_retry_finds_the_channel_gone() {
        let id = ChannelId::parse("YWJj").unwrap();
        for (lost, deleted) in [(Act::Close, true), (Act::GoAway(1), false)] {
            let f = Fixture::new(vec![
                answer(200, r#"{"channels":[]}"#),
                lost.clone(),
                answer(400, NOT_REGISTERED),
            ])
            .await;
            tokio::time::timeout(WAIT, f.manager.list(DOMAIN))
                .await
                .unwrap()
                .unwrap();
            let result = tokio::time::timeout(WAIT, f.manager.delete(DOMAIN, &id))
                .await
                .unwrap();
            assert_eq!(f.host.streams(), [2, 1], "{lost:?}");
            if deleted {
                result.unwrap_or_else(|e| panic!("{lost:?}: {e}"));
            } else {
                let e = result.unwrap_err();
                assert_eq!(e.http_status(), 404, "{lost:?}: {e}");
            }
        }
    }

    /// A create APNs did not process (its stream above the last stream id of a GOAWAY on the kept connection) was
    /// not done: it is made again at once on a new connection, and done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_apns_did_not_process_is_made_again_on_a_new_connection() {
        let f = Fixture::new(vec![created("YWJj"), Act::GoAway(1), created("ZGVm")]).await;
        let first = tokio::time::timeout(WAIT, f.manager.create(DOMAIN, StoragePolicy::NoStorage))
            .await
            .unwrap()
            .unwrap();
        let second = tokio::time::timeout(WAIT, f.manager.create(DOMAIN, StoragePolicy::NoStorage))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (first.channel.as_str(), second.channel.as_str()),
            ("YWJj", "ZGVm")
        );
        assert_eq!(f.host.streams(), [2, 1]);
    }

    /// A call whose stream the host refused unprocessed (`REFUSED_STREAM`) on a sound kept connection is made again
    /// at once on that connection, a create included (it was not done), and the connection is kept for the next
    /// call: no new connection is opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_stream_is_made_again_on_the_connection_which_is_kept() {
        let f = Fixture::new(vec![
            answer(200, r#"{"channels":[]}"#),
            Act::Refuse,
            Act::Refuse,
            created("YWJj"),
            answer(200, r#"{"channels":["YWJj"]}"#),
        ])
        .await;
        let within = tokio::time::timeout(WAIT, async {
            f.manager.list(DOMAIN).await.unwrap();
            let made = f
                .manager
                .create(DOMAIN, StoragePolicy::NoStorage)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(made.channel.as_str(), "YWJj");
            let (_, listed) = f.manager.list(DOMAIN).await.unwrap();
            assert_eq!(listed, [made.channel]);
        });
        within.await.expect("the calls took too long");
        assert_eq!(f.host.streams(), [5], "every call on the kept connection");
        assert_eq!(
            f.manager.counts(),
            [
                (DOMAIN.to_owned(), "create", "ok".to_owned(), 1),
                (DOMAIN.to_owned(), "list", "ok".to_owned(), 2),
            ]
        );
    }

    /// A host that refuses every stream does not have a call sent to it again and again: `MAX_REFUSALS` more times
    /// on its connection, then once more on a new connection (which refuses it as many times), and the call fails as
    /// a passing failure (503, retry later; a create certain not to be done).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_refusing_every_stream_fails_the_call_after_a_bounded_number_of_tries() {
        let f = Fixture::new(vec![Act::Refuse]).await;
        let e = tokio::time::timeout(WAIT, f.manager.create(DOMAIN, StoragePolicy::NoStorage))
            .await
            .expect("the call took too long")
            .unwrap_err();
        let tries = 1 + MAX_REFUSALS as usize;
        assert_eq!(f.host.streams(), [tries, tries]);
        assert_eq!(e.http_status(), 503, "{e}");
        assert!(!e.may_exist(), "{e}");
        assert!(e.to_string().contains("refused"), "{e}");
        assert_eq!(
            f.manager.counts(),
            [(DOMAIN.to_owned(), "create", "refused".to_owned(), 1)]
        );
    }

    /// APNs publishes no size for channel ids: a create answered with a 400-character id gives that id (not an
    /// unreadable answer, which would leave the channel orphaned), and the id is taken back for a read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_id_of_400_characters_is_created_and_read() {
        let long = "QUJD".repeat(100);
        let f = Fixture::new(vec![
            created(&long),
            answer(
                200,
                r#"{"message-storage-policy":1,"push-type":"LiveActivity"}"#,
            ),
        ])
        .await;
        let made = tokio::time::timeout(
            WAIT,
            f.manager.create(DOMAIN, StoragePolicy::MostRecentMessage),
        )
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(made.channel.as_str(), long);
        // As the REST routes take it from a caller.
        let id = ChannelId::parse(&long).unwrap();
        let info = tokio::time::timeout(WAIT, f.manager.read(DOMAIN, &id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.policy, StoragePolicy::MostRecentMessage);
    }

    /// A call the host leaves unanswered does not hold up the domain's other calls: they go out at once on the same
    /// connection and are answered while it waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_left_unanswered_holds_up_no_other_call_of_its_domain() {
        let f = Fixture::new(vec![Act::Hang, answer(200, r#"{"channels":["YWJj"]}"#)]).await;
        let manager = f.manager.clone();
        let unanswered = tokio::spawn(async move { manager.list(DOMAIN).await });
        let deadline = tokio::time::Instant::now() + WAIT;
        while f.host.streams() != [1] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first call never reached the host"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, listed) = tokio::time::timeout(WAIT, f.manager.list(DOMAIN))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed, [ChannelId::parse("YWJj").unwrap()]);
        assert!(
            !unanswered.is_finished(),
            "the second call waited for the first"
        );
        assert_eq!(f.host.streams(), [2], "both calls on the kept connection");
        unanswered.abort();
    }

    /// Calls of a domain that lost their kept connection together (an idle connection APNs closed under them) are
    /// made again on one new connection between them: the first to get the domain's lock opens it and the others
    /// use it, rather than each throwing away the one just opened for a connection of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_lost_their_connection_together_open_one_new_connection() {
        const CALLS: usize = 4;
        let listed = || answer(200, r#"{"channels":[]}"#);
        // The first call opens the connection; the CALLS after it are left unanswered on it until the last of them
        // came, whose request closes it under all of them; every request after that is answered.
        let mut script = vec![listed()];
        script.extend(std::iter::repeat_n(Act::Hang, CALLS - 1));
        script.extend([Act::Close, listed()]);
        let f = Fixture::new(script).await;
        let within = tokio::time::timeout(WAIT, async {
            f.manager.list(DOMAIN).await.unwrap();
            let calls: Vec<_> = (0..CALLS)
                .map(|_| {
                    let manager = f.manager.clone();
                    tokio::spawn(async move { manager.list(DOMAIN).await })
                })
                .collect();
            for call in calls {
                call.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            }
        });
        within.await.expect("the calls took too long");
        assert_eq!(
            f.host.streams(),
            [1 + CALLS, CALLS],
            "requests per connection"
        );
    }

    /// A call that cannot have its domain's lock in time, held by a call opening the connection, says that it
    /// waited for that connection (not that connecting timed out), is a passing failure (503), and sent nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waiting_too_long_for_the_connection_another_opens_says_so() {
        let f = Fixture::new(vec![answer(200, r#"{"channels":[]}"#)]).await;
        let manager = ChannelManager {
            resolver: f.resolver.clone(),
            conns: conns::Connections::new(f.resolver.clone(), Purpose::Management, CALL_TIMEOUT),
            counts: Mutex::new(BTreeMap::new()),
            connect_wait: Duration::from_secs(1),
        };
        // As a call opening the connection holds it.
        let opening = manager.conns.hold(DOMAIN).await;
        let e = tokio::time::timeout(WAIT, manager.list(DOMAIN))
            .await
            .expect("the call waited past its bound")
            .unwrap_err();
        drop(opening);
        assert!(matches!(e, ChannelError::ConnectionWait { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("waited 1 s for the connection another call of the domain is opening"),
            "{e}"
        );
        assert!(!e.to_string().contains("timed out"), "{e}");
        assert_eq!(e.http_status(), 503, "{e}");
        assert_eq!(e.result(), "unreachable");
        assert!(!e.may_exist());
        assert_eq!(f.host.streams(), Vec::<usize>::new(), "nothing was sent");
    }

    /// A reason the host made up (a proxy's page) is counted under one label, and kept whole in the answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_reason_is_counted_under_one_label() {
        let page = r#"{"reason":"<html>Bad Gateway</html>"}"#;
        let f = Fixture::new(vec![answer(502, page)]).await;
        let e = tokio::time::timeout(WAIT, f.manager.list(DOMAIN))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.apns(), Some((502, "<html>Bad Gateway</html>")), "{e}");
        assert_eq!(
            f.manager.counts(),
            [(
                DOMAIN.to_owned(),
                "list",
                herald_apns::client::UNRECOGNIZED_REASON.to_owned(),
                1
            )]
        );
    }

    /// A domain whose credentials cannot be read now (its key file is missing) is a passing failure (503, retry
    /// later), not a configuration mistake (400); its text names the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_whose_key_cannot_be_read_is_unavailable_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:1" )
  apn_key = "{missing}"
  apn_key_id = "ABC123DEFG"
  apn_team_id = "DEF123GHIJ"
  apn_topic = "{TOPIC}"
  apn_channel_route = "https://127.0.0.1:1"
}}
"#,
            missing = dir.path().join("missing.p8").display()
        );
        let config = herald_conf::Config::parse_str("herald.conf", &text).unwrap();
        let manager = ChannelManager::new(Arc::new(ConfigResolver::new(Arc::new(config))));
        let e = manager.list(DOMAIN).await.unwrap_err();
        assert!(matches!(e, ChannelError::Unavailable { .. }), "{e:?}");
        assert_eq!(e.http_status(), 503, "{e}");
        assert!(e.to_string().contains("missing.p8"), "{e}");
        assert_eq!(e.result(), "unavailable");
    }

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
