//! The delivery settings of one (binding, domain): where its notifications go, how, and how hard to retry; and the
//! client certificate a domain authenticates with, whose validity dates the doors hold each notification against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_apns::binary::BinaryFormat;
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::format_utc;
use herald_apns::provider_token::ProviderTokenCache;

use super::hosts::HostBudget;
use crate::model::message::Queued;
use crate::model::retry::RetryPolicy;

/// Which APNs protocol a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteProtocol {
    Http2,
    Binary(BinaryFormat),
}

/// The client certificate a TLS configuration presents (certificate authentication): the option and file it comes
/// from, and its validity window, read once when the identity is loaded. APNs refuses the TLS handshake of a
/// certificate outside its window, so a notification for it could never be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `tls_certificate` or `tls_pkcs12`: the option that names the file.
    pub option: &'static str,
    pub file: PathBuf,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Why a client certificate cannot be used at a given time: it has expired, or is not valid yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutsideValidity {
    #[error(
        "{option} {}: the client certificate expired at {} (notAfter); APNs refuses every connection made with \
         it: renew it, then reload",
        file.display(),
        format_utc(*not_after)
    )]
    Expired {
        option: &'static str,
        file: PathBuf,
        not_after: SystemTime,
    },
    #[error(
        "{option} {}: the client certificate is not valid before {} (notBefore); APNs refuses every connection \
         made with it until then",
        file.display(),
        format_utc(*not_before)
    )]
    NotYetValid {
        option: &'static str,
        file: PathBuf,
        not_before: SystemTime,
    },
}

impl ClientCertificate {
    /// Whether the certificate is valid at `now` (both ends of the window included, as X.509 has it). Cheap: two
    /// comparisons, for the doors to ask at every notification.
    pub fn check(&self, now: SystemTime) -> Result<(), OutsideValidity> {
        if now > self.not_after {
            return Err(OutsideValidity::Expired {
                option: self.option,
                file: self.file.clone(),
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(OutsideValidity::NotYetValid {
                option: self.option,
                file: self.file.clone(),
                not_before: self.not_before,
            });
        }
        Ok(())
    }
}

/// Everything the queue and the pool need to deliver one domain's notifications.
#[derive(Clone)]
pub struct DeliverySettings {
    pub domain: Arc<str>,
    pub binding_group: Arc<str>,
    pub binding: Arc<str>,
    pub protocol: RouteProtocol,
    pub endpoint: Endpoint,
    /// rustls configuration: ALPN `h2` for HTTP/2, the client certificate where there is one.
    pub tls: Arc<rustls::ClientConfig>,
    /// Provider-token auth (HTTP/2 only).
    pub auth: Option<ProviderTokenCache>,
    /// `apn_topic`: sent when a notification names no topic.
    pub default_topic: Option<Arc<str>>,
    /// Without `apn_topic`, the topic of the domain's client certificate (its bundle id) on HTTP/2: what a Live
    /// Activity's topic is made of when the sender names none (APNs' own default, the bare bundle id, lacks the
    /// `.push-type.liveactivity` suffix). `None` with `apn_topic`, without a certificate, or on the binary protocol.
    pub certificate_topic: Option<Arc<str>>,
    /// `max_outbound_connections` of this (binding, domain).
    pub max_connections: usize,
    /// The connection budget of the route's host when a `host` stanza caps it, shared by every pool routed there.
    pub host_budget: Option<Arc<HostBudget>>,
    /// `idle_timeout`; `None` for 0 (never close).
    pub idle_timeout: Option<Duration>,
    /// `delivery_response_timeout`: the binary protocol's silence window, HTTP/2's answer timeout.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2: PING after this long without traffic.
    pub keepalive: Duration,
    /// `mx_failures_to_delay`: consecutive connection failures before the domain's queue is delayed; 0 = never.
    pub mx_failures_to_delay: u32,
    pub retry: RetryPolicy,
    /// `apn_expiry`: APNs expiration given to notifications that carry none, counted from reception.
    pub apn_expiry: Duration,
    /// Binary protocol: most notifications inside one connection's response window.
    pub max_window: usize,
}

impl DeliverySettings {
    /// The size of the notification as herald sends it (apn_logger `%B`): on the binary protocol the whole
    /// encoded notification (command, lengths, items: 61 + payload bytes for a frame with a 32-byte token); on
    /// HTTP/2 the payload plus the request's header fields, uncompressed, as name and value bytes (`:method`,
    /// `:scheme`, `:authority`, `:path` and each `apns-*` header; the `authorization` header of token auth is not
    /// counted).
    pub fn wire_bytes(&self, item: &Queued) -> usize {
        use herald_apns::binary::BinaryFormat;
        let settings = self;
        let n = &item.notification.push;
        let token = n.token.as_bytes().len();
        let payload = n.payload.len();
        match settings.protocol {
            RouteProtocol::Binary(BinaryFormat::Simple) => 1 + 2 + token + 2 + payload,
            RouteProtocol::Binary(BinaryFormat::Enhanced) => 1 + 4 + 4 + 2 + token + 2 + payload,
            RouteProtocol::Binary(BinaryFormat::Frame) => {
                5 + (3 + token) + (3 + payload) + (3 + 4) + (3 + 4) + (3 + 1)
            }
            RouteProtocol::Http2 => {
                let digits = |v: u64| v.checked_ilog10().map_or(1, |d| d as usize + 1);
                let field = |name: &str, value: usize| name.len() + value;
                let topic = n.topic.as_deref().or(settings.default_topic.as_deref());
                let mut size = field(":method", 4)
                    + field(":scheme", 5)
                    + field(":authority", settings.endpoint.authority_len())
                    + field(":path", "/3/device/".len() + 2 * token)
                    + payload;
                size += topic.map_or(0, |t| field("apns-topic", t.len()));
                size += n
                    .push_type
                    .map_or(0, |p| field("apns-push-type", p.as_str().len()));
                size += n
                    .priority
                    .map_or(0, |p| field("apns-priority", digits(u64::from(p.as_u8()))));
                size += n
                    .expiration
                    .map_or(0, |e| field("apns-expiration", digits(u64::from(e))));
                size += n
                    .collapse_id
                    .as_deref()
                    .map_or(0, |c| field("apns-collapse-id", c.len()));
                size += n.apns_id.map_or(0, |_| field("apns-id", 36));
                size
            }
        }
    }
    /// Whether `self` and `other` reach APNs the same way: the same protocol, route, source address, TLS
    /// configuration (client identity and trust) and provider-token key. Bindings whose settings of a domain are
    /// the same this way need one connectivity check and one feedback poll between them.
    pub fn same_route_and_credentials(&self, other: &DeliverySettings) -> bool {
        let same_auth = match (&self.auth, &other.auth) {
            (None, None) => true,
            (Some(a), Some(b)) => a.is_same_cache(b),
            _ => false,
        };
        self.protocol == other.protocol
            && self.endpoint == other.endpoint
            && Arc::ptr_eq(&self.tls, &other.tls)
            && same_auth
    }

    /// Whether connections opened under `self` can go on serving under `other`: the same route and protocol, the
    /// same TLS configuration (client identity and trust) and provider-token cache, and the same connection
    /// timeouts. When they can, a reload changes only what the pool and the queue read (connection limit,
    /// retries, topic, …) and the connections stay up.
    pub fn same_connections(&self, other: &DeliverySettings) -> bool {
        let same_auth = match (&self.auth, &other.auth) {
            (None, None) => true,
            (Some(a), Some(b)) => a.is_same_cache(b),
            _ => false,
        };
        self.protocol == other.protocol
            && self.endpoint == other.endpoint
            && Arc::ptr_eq(&self.tls, &other.tls)
            && same_auth
            && self.idle_timeout == other.idle_timeout
            && self.response_timeout == other.response_timeout
            && self.connect_timeout == other.connect_timeout
            && self.keepalive == other.keepalive
            && self.max_window == other.max_window
            // Connections hold slots of their host's budget: another budget (a host stanza added or removed)
            // means new connections.
            && match (&self.host_budget, &other.host_budget) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

#[cfg(test)]
impl DeliverySettings {
    /// Settings for unit tests: `domain` from the default binding over HTTP/2 to 127.0.0.1:`port` without
    /// certificate checks, one connection, one-second timeouts and retry intervals, unlimited retries, and
    /// `mx_failures_to_delay` high enough that failed connection attempts never delay the queue.
    pub(crate) fn for_tests(domain: &str, port: u16) -> Self {
        use crate::model::retry::MaxRetries;
        use herald_apns::identity::{RootSource, client_config};
        DeliverySettings {
            domain: Arc::from(domain),
            binding_group: Arc::from("default"),
            binding: Arc::from("default"),
            protocol: RouteProtocol::Http2,
            endpoint: Endpoint::new("127.0.0.1", port),
            tls: client_config(None, RootSource::NoVerify, true)
                .expect("a client TLS configuration without certificate checks"),
            auth: None,
            default_topic: Some(Arc::from("com.example.app")),
            certificate_topic: None,
            max_connections: 1,
            host_budget: None,
            idle_timeout: None,
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            keepalive: Duration::from_secs(30),
            mx_failures_to_delay: 1000,
            retry: RetryPolicy {
                retry_interval: Duration::from_secs(1),
                max_retry_interval: Duration::from_secs(1),
                max_retries: MaxRetries::Unlimited,
                message_expiration: Duration::from_secs(600),
                never_attempt_expired: false,
            },
            apn_expiry: Duration::from_secs(600),
            max_window: 1,
        }
    }
}

impl std::fmt::Debug for DeliverySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverySettings")
            .field("domain", &self.domain)
            .field("binding_group", &self.binding_group)
            .field("binding", &self.binding)
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .field("token_auth", &self.auth.is_some())
            .field("default_topic", &self.default_topic)
            .field("certificate_topic", &self.certificate_topic)
            .field("max_connections", &self.max_connections)
            .field(
                "host_budget",
                &self
                    .host_budget
                    .as_ref()
                    .map(|b| (b.name().to_owned(), b.limit())),
            )
            .field("idle_timeout", &self.idle_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("mx_failures_to_delay", &self.mx_failures_to_delay)
            .field("retry", &self.retry)
            .finish()
    }
}
