//! The door every notification goes through, whatever listener it came from (design §2 "accept").
//!
//! [`Intake::prepare`] turns a [`Submission`] into a [`Notification`] or refuses it with a reason that names the
//! field (unknown domain, bad token for the domain's protocol, payload rules, header values): a bad notification
//! is refused here, never failed later. [`Intake::commit`] makes a batch durable ([`Durable`], group-committed by
//! the spool) and only then logs the receptions and queues them: the listener acknowledges after `commit`
//! returns `Ok`, so an acknowledged notification is on disk.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use herald_apns::notification::{NotificationParts, validate_notification};
use herald_apns::payload::infer_push_type;
use herald_apns::push::{Priority, Protocol, PushType};

use crate::outbound::settings::RouteProtocol;
use crate::queue::message::{IdGenerator, MessageId, Notification, unix_now};
use crate::queue::{Engine, SettingsResolver};

/// One notification as a listener received it, before validation.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The domain (app) that routes it.
    pub domain: String,
    /// Device token, hex.
    pub token: String,
    pub payload: Bytes,
    pub topic: Option<String>,
    /// `apns-push-type` value; inferred from the payload when absent.
    pub push_type: Option<String>,
    pub priority: Option<u8>,
    /// APNs expiration, epoch seconds (0 = once).
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    pub apns_id: Option<String>,
    /// Envelope sender (`MAIL FROM`, REST `return_path`), for the logs.
    pub sender: String,
    /// Envelope recipient (`RCPT TO`, REST recipient address), for the logs.
    pub recipient: String,
}

/// Why a submission or a batch was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender must not retry as is: the text names what was wrong (SMTP 5xx, HTTP 4xx).
    #[error("{0}")]
    Permanent(String),
    /// herald cannot take it now (spool full or failing, shutting down): try again later (SMTP 4xx, HTTP 503).
    #[error("{0}")]
    Temporary(String),
}

/// Where and how a batch arrived, for the reception lines of the mainlog.
#[derive(Debug, Clone)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// `esmtp` or `rest` (momentum.md §7.1).
    pub protocol: &'static str,
    pub batch_id: MessageId,
    pub conn_id: MessageId,
}

/// A boxed future, for object-safe traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What makes accepted notifications durable. The spool implements it; [`NotDurable`] is for tests.
pub trait Durable: Send + Sync + 'static {
    /// Resolves once every notification of `batch` is on disk; an error is temporary for the sender.
    fn persist<'a>(&'a self, batch: &'a [Notification]) -> BoxFuture<'a, Result<(), String>>;
}

/// Keeps nothing: for tests and benchmarks that exercise listeners without a spool. Never for production.
#[derive(Debug, Default)]
pub struct NotDurable;

impl Durable for NotDurable {
    fn persist<'a>(&'a self, _batch: &'a [Notification]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Validation, durability and queueing for every listener.
pub struct Intake {
    resolver: Arc<dyn SettingsResolver>,
    durable: Arc<dyn Durable>,
    engine: Arc<Engine>,
    ids: IdGenerator,
    /// Notifications refused at the door, and batches refused for a temporary reason (for `summary`).
    refused: std::sync::atomic::AtomicU64,
}

impl Intake {
    pub fn new(
        resolver: Arc<dyn SettingsResolver>,
        durable: Arc<dyn Durable>,
        engine: Arc<Engine>,
        ids: IdGenerator,
    ) -> Self {
        Intake {
            resolver,
            durable,
            engine,
            ids,
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A fresh id (for batches and connections).
    pub fn next_id(&self) -> MessageId {
        self.ids.next()
    }

    /// Notifications refused so far (permanently at the door, or with their batch for a temporary reason).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Validates one submission for its domain and builds the notification; nothing is stored yet.
    pub fn prepare(&self, s: Submission, source: &Source) -> Result<Notification, Refusal> {
        let result = self.validate(s, source);
        if result.is_err() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn validate(&self, s: Submission, source: &Source) -> Result<Notification, Refusal> {
        let domain = s.domain.to_ascii_lowercase();
        if domain.is_empty() {
            return Err(Refusal::Permanent(
                "no domain: the recipient must name the app's domain".into(),
            ));
        }
        let settings = self.resolver.resolve(&domain).map_err(|e| {
            Refusal::Permanent(format!(
                "domain {domain:?} cannot take push notifications: {e}"
            ))
        })?;
        let protocol = match settings.protocol {
            RouteProtocol::Http2 => Protocol::Http2,
            RouteProtocol::Binary(_) => Protocol::Binary,
        };
        let push_type = match s.push_type.as_deref() {
            Some(t) => t
                .parse::<PushType>()
                .map_err(|e| Refusal::Permanent(format!("push_type: {e}")))?,
            None => infer_push_type(&s.payload),
        };
        let priority = match s.priority {
            Some(p) => {
                Priority::from_u8(p).map_err(|e| Refusal::Permanent(format!("priority: {e}")))?
            }
            None => push_type.default_priority(),
        };
        let topic = s
            .topic
            .clone()
            .or_else(|| settings.default_topic.as_deref().map(str::to_owned));
        let token = validate_notification(&NotificationParts {
            token: &s.token,
            topic: topic.as_deref(),
            push_type,
            protocol,
            priority,
            collapse_id: s.collapse_id.as_deref(),
            apns_id: s.apns_id.as_deref(),
            expiration: s.expiration,
            payload: &s.payload,
        })
        .map_err(|e| Refusal::Permanent(e.to_string()))?;
        let apns_id = match s.apns_id {
            Some(id) => Some(Arc::from(id.to_ascii_lowercase())),
            None if protocol == Protocol::Http2 => {
                Some(Arc::from(uuid::Uuid::new_v4().to_string()))
            }
            None => None,
        };
        Ok(Notification {
            id: self.ids.next(),
            batch_id: source.batch_id,
            conn_id: source.conn_id,
            domain: settings.domain.clone(),
            token,
            topic: topic.map(Arc::from),
            push_type: Some(push_type),
            priority: s.priority.map(|_| priority),
            expiration: s.expiration.and_then(|e| u32::try_from(e).ok()),
            collapse_id: s.collapse_id.map(Arc::from),
            apns_id,
            payload: s.payload,
            sender: Arc::from(s.sender),
            recipient: Arc::from(s.recipient),
            received_at: unix_now(),
        })
    }

    /// Makes `batch` durable, then logs and queues it. When this returns `Ok`, the sender may be told yes.
    pub async fn commit(&self, batch: Vec<Notification>, source: &Source) -> Result<(), Refusal> {
        if batch.is_empty() {
            return Ok(());
        }
        self.durable.persist(&batch).await.map_err(|e| {
            Refusal::Temporary(format!("the spool could not store the notifications: {e}"))
        })?;
        let logs = self.engine.logs().clone();
        for n in &batch {
            logs.reception(n, source.ip, source.protocol);
        }
        for n in batch {
            self.engine.submit(n).await.map_err(|e| {
                Refusal::Temporary(format!("queueing failed after the spool took it: {e}"))
            })?;
        }
        Ok(())
    }
}
