//! The door every notification goes through, whatever listener it came from (docs/architecture.md#accept).
//!
//! [`Intake::prepare`] turns a [`Submission`] into a [`Notification`] or refuses it with a reason that names the
//! field (unknown domain, bad token for the domain's protocol, payload rules, header values): a bad notification
//! is refused here, never failed later. [`Intake::check_domain`] answers the first of those questions alone, typed
//! ([`DomainRefusal`]), for listeners that refuse a recipient before its content arrives; a domain whose
//! credentials cannot be read now is a temporary refusal, the operator's to fix. [`Intake::reserve`] takes the
//! memory a batch needs before the listener builds it ([`Room`]), so concurrent senders cannot all build large
//! batches on one snapshot of the room left. [`Intake::commit`] (or [`Intake::commit_reserved`] with that room)
//! makes a batch durable ([`Durable`], group-committed by the spool) and only then logs the receptions and queues
//! them: the listener acknowledges after `commit` returns `Ok`, so an acknowledged notification is on disk. Before
//! that, a batch that would take a domain past its share of memory while herald is at least half full is refused
//! ([`Unavailable::OverShare`]), so that one domain whose deliveries fail cannot fill the memory every other
//! domain needs.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use herald_apns::binary::BinaryFormat;
use herald_apns::client::PushRequest;
use herald_apns::notification::{
    NotificationError, NotificationParts, PushHeaders, RouteAuth, validate_notification,
};
use herald_apns::payload::{PayloadError, check_binary_format, infer_push_type_for};
use herald_apns::push::{
    ApnsId, BINARY_PAYLOAD_LIMIT, HTTP2_PAYLOAD_LIMIT, Priority, Protocol, PushError, PushType,
    VOIP_PAYLOAD_LIMIT, derive_topic, validate_canonical_apns_id, validate_collapse_id,
    validate_expiration, validate_topic,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::outbound::settings::{DeliverySettings, RouteProtocol};
use crate::queue::message::{
    DEFAULT_BINDING, DEFAULT_BINDING_GROUP, IdGenerator, MessageId, Notification, unix_now,
};
use crate::queue::{Engine, OverShare, Reservation, ResolveError, SettingsResolver, SubmitError};
use herald_spool::SpoolError;

/// The largest payload APNs takes for any push type over either protocol (a VoIP push over HTTP/2). A larger payload
/// is refused by its size alone, before anything reads it.
pub const MAX_PAYLOAD_SIZE: usize = {
    let mut max = BINARY_PAYLOAD_LIMIT;
    if HTTP2_PAYLOAD_LIMIT > max {
        max = HTTP2_PAYLOAD_LIMIT;
    }
    if VOIP_PAYLOAD_LIMIT > max {
        max = VOIP_PAYLOAD_LIMIT;
    }
    max
};

/// One notification as a listener received it, before validation.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The domain (app) that routes it.
    pub domain: String,
    /// Device token, hex.
    pub token: String,
    pub payload: Bytes,
    /// The APNs request headers as given.
    pub headers: PushHeaders,
    /// Envelope sender (`MAIL FROM`, REST `return_path`), for the logs.
    pub sender: String,
    /// Envelope recipient (`RCPT TO`, REST recipient address), for the logs.
    pub recipient: String,
    /// The binding to deliver from (REST `binding`, MCMT `X-Binding`); `None` is the `default` binding.
    pub binding: Option<String>,
}

/// Why a submission or a batch was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The sender must not retry as is: the text names what was wrong (SMTP 5xx, HTTP 4xx).
    #[error("{0}")]
    Permanent(String),
    /// herald cannot take it now (spool full or failing, queue full, its domain over its share of memory, shutting
    /// down): try again later (SMTP 4xx, HTTP 503).
    #[error("{0}")]
    Temporary(Unavailable),
}

/// An option of a notification: an APNs request header its sender sets (REST names it by its field, MCMT by its
/// `X-APNs-…` header), which the door checks ([`OptionRefusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApnsOption {
    /// `apns-topic`.
    Topic,
    /// `apns-push-type`.
    PushType,
    /// `apns-priority`.
    Priority,
    /// `apns-expiration`.
    Expiration,
    /// `apns-collapse-id`.
    CollapseId,
    /// `apns-id`.
    ApnsId,
}

impl ApnsOption {
    /// Every option.
    pub const ALL: [ApnsOption; 6] = [
        ApnsOption::Topic,
        ApnsOption::PushType,
        ApnsOption::Priority,
        ApnsOption::Expiration,
        ApnsOption::CollapseId,
        ApnsOption::ApnsId,
    ];

    /// The option's field in a REST request (`collapse_id`, …).
    pub fn field(self) -> &'static str {
        match self {
            ApnsOption::Topic => "topic",
            ApnsOption::PushType => "push_type",
            ApnsOption::Priority => "priority",
            ApnsOption::Expiration => "expiration",
            ApnsOption::CollapseId => "collapse_id",
            ApnsOption::ApnsId => "apns_id",
        }
    }

    /// The option a header check's refusal is about.
    fn of(e: &PushError) -> ApnsOption {
        match e {
            PushError::UnknownPushType(_) => ApnsOption::PushType,
            PushError::BadPriority(_) => ApnsOption::Priority,
            PushError::CollapseIdTooLong { .. } | PushError::BadCollapseIdCharacters { .. } => {
                ApnsOption::CollapseId
            }
            PushError::BadApnsId(_) | PushError::ApnsIdNotLowercase(_) => ApnsOption::ApnsId,
            PushError::BadExpiration(_) | PushError::ExpirationOutOfRange(_) => {
                ApnsOption::Expiration
            }
            PushError::EmptyTopic
            | PushError::BadTopicCharacters { .. }
            | PushError::TopicSuffixMismatch { .. }
            | PushError::TopicNamesOtherPushType { .. } => ApnsOption::Topic,
        }
    }

    /// Why APNs refuses `value` given as this option whatever the push type, route and payload of the notification
    /// that carries it, in words that do not name the option; `None` when it may be taken (it can still be refused
    /// with the rest of a notification). For a listener that gives one value to many notifications and refuses the
    /// request once instead of each of them ([`Intake::prepare_detailed`] refuses each with the same words): an
    /// unknown push type, a priority other than 10, 5 or 1, an expiration that is not a count of seconds in 32 bits,
    /// a collapse id too long or not printable ASCII, an apns-id that is not a canonical lowercase UUID, a topic that
    /// is empty or not printable ASCII. A value refused only for some push types (a topic whose suffix is another
    /// push type's, priority 10 for a background push) passes, to be refused with the notifications it applies to.
    pub fn refused_alone(self, value: &str) -> Option<String> {
        let refused = match self {
            ApnsOption::PushType => value.parse::<PushType>().err(),
            ApnsOption::Priority => match value.parse::<u8>() {
                Ok(p) => Priority::from_u8(p).err(),
                Err(_) => Some(PushError::BadPriority(value.to_owned())),
            },
            ApnsOption::Expiration => match value.parse::<u64>() {
                Ok(e) => validate_expiration(e).err(),
                Err(_) => Some(PushError::BadExpiration(value.to_owned())),
            },
            ApnsOption::CollapseId => validate_collapse_id(value).err(),
            ApnsOption::ApnsId => validate_canonical_apns_id(value).err(),
            // The checks of any topic before its push type's: the push type that is sent checks its suffix.
            ApnsOption::Topic => match validate_topic(value, PushType::Alert) {
                Err(e @ (PushError::EmptyTopic | PushError::BadTopicCharacters { .. })) => Some(e),
                _ => None,
            },
        };
        refused.map(|e| e.to_string())
    }
}

/// The door's refusal of an option's value ([`DoorRefusal::option`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionRefusal {
    pub option: ApnsOption,
    /// Why, in words that do not name the option (`apns-collapse-id is 65 bytes; at most 64 are allowed`), for a
    /// listener that names it the way its sender gave it (REST: `notifications[2].collapse_id: …`).
    pub why: String,
}

/// Why [`Intake::prepare_detailed`] refused a submission: the refusal every listener gives, and the option it is
/// about when it is one option's value.
#[derive(Debug, Clone)]
pub struct DoorRefusal {
    /// What [`Intake::prepare`] answers: a [`Refusal::Permanent`] names the option as the door's texts always have
    /// (`priority: …`, `apns-collapse-id …`).
    pub refusal: Refusal,
    /// The option whose value was refused; `None` for anything else (the token, the payload, the domain, the route,
    /// a topic missing, a temporary refusal).
    pub option: Option<OptionRefusal>,
}

impl DoorRefusal {
    /// The refusal of `option`'s value for `why`; the text [`Intake::prepare`] gives starts with the option's field
    /// when `named` (`priority: apns-priority must be …`), else is `why` alone, whose words name it
    /// (`apns-collapse-id …`).
    fn option(option: ApnsOption, why: impl ToString, named: bool) -> DoorRefusal {
        let why = why.to_string();
        let text = if named {
            format!("{}: {why}", option.field())
        } else {
            why.clone()
        };
        DoorRefusal {
            refusal: Refusal::Permanent(text),
            option: Some(OptionRefusal { option, why }),
        }
    }

    /// The refusal of a header check, about the option it names.
    fn header(e: PushError) -> DoorRefusal {
        DoorRefusal::option(ApnsOption::of(&e), e, false)
    }

    /// The refusal of a notification's checks ([`validate_notification`]): a header's, or a priority its push type
    /// or route does not take, is about that option.
    fn notification(e: NotificationError) -> DoorRefusal {
        match e {
            NotificationError::Attribute(e) => DoorRefusal::header(e),
            NotificationError::Payload(e @ PayloadError::PriorityNotAllowed { .. }) => {
                DoorRefusal::option(ApnsOption::Priority, e, false)
            }
            other => Refusal::Permanent(other.to_string()).into(),
        }
    }

    /// [`notification`](Self::notification) for a domain routed to the binary protocol in `format`: where the
    /// format has no priority field, a content-available-only payload refused priority 10 is refused as a background
    /// push that format cannot send at all, since priority 5, which it needs, would not reach APNs either.
    fn binary_notification(e: NotificationError, format: BinaryFormat) -> DoorRefusal {
        match e {
            NotificationError::Payload(PayloadError::PriorityNotAllowed {
                priority: Priority::Immediate,
                ..
            }) if !format.carries_priority() => {
                match check_binary_format(format, Priority::Immediate, true) {
                    Err(why) => DoorRefusal::option(ApnsOption::Priority, why, false),
                    Ok(()) => DoorRefusal::notification(e),
                }
            }
            e => DoorRefusal::notification(e),
        }
    }
}

/// Why a collapse id is refused for a domain routed to the binary protocol, which has no field for it.
const BINARY_COLLAPSE_ID: &str = "apns-collapse-id cannot be sent over the binary protocol, which has no collapse \
     id: the notification would not replace the ones that share it. Leave it out, or route the domain to an https:// \
     host";

impl From<Refusal> for DoorRefusal {
    fn from(refusal: Refusal) -> DoorRefusal {
        DoorRefusal {
            refusal,
            option: None,
        }
    }
}

impl From<DomainRefusal> for DoorRefusal {
    fn from(d: DomainRefusal) -> DoorRefusal {
        Refusal::from(d).into()
    }
}

/// Why herald cannot take notifications now ([`Refusal::Temporary`]). Listeners choose their answer by the
/// variant, never by the text: SMTP says `452 4.3.1` when storage or memory is full ([`Unavailable::is_full`]),
/// `451 4.3.0` otherwise; REST says 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// The spool could not make the batch durable (its disk is full, or it failed).
    #[error("the spool could not store the notifications: {0}")]
    Spool(#[from] SpoolError),
    /// The engine holds `max_resident_notifications` in memory (back-pressure).
    #[error(
        "queue full: herald holds {held} notifications in memory (max_resident_notifications = {max}) and cannot take {wanted} more now; retry later"
    )]
    QueueFull {
        held: usize,
        max: usize,
        wanted: usize,
    },
    /// herald stopped while the batch was being stored: whatever of it the spool took is queued at the next start.
    #[error(
        "herald stopped while storing the notifications ({0}); any the spool took are delivered after a restart"
    )]
    Queueing(#[source] SubmitError),
    /// With a store that queues elsewhere (JetStream): the batches being built and stored at once hold as many
    /// notifications as this node builds at a time (as many as `max_resident_notifications`).
    #[error(
        "busy: herald is building {building} notifications of other batches (at most max_resident_notifications = {max} at once) and cannot take {wanted} more now; retry later"
    )]
    Building {
        building: usize,
        max: usize,
        wanted: usize,
    },
    /// The domain's delivery settings cannot be built now for a reason on herald's side (its credential files
    /// cannot be read or used): the operator fixes it, the sender retries.
    #[error("{0} (herald's configuration must be fixed; retry later)")]
    Configuration(DomainRefusal),
    /// herald holds at least half of `max_resident_notifications` in memory and the batch would take the domain past
    /// its share of it ([`Engine::over_share`]): its deliveries are not keeping up. Other domains are still taken.
    #[error(
        "domain {} holds {} notifications in memory, and {} more would pass its share ({} of max_resident_notifications = {}, shared by {} domains while herald is at least half full): its deliveries are not keeping up; other domains are still accepted; retry later",
        .0.domain, .0.held, .0.wanted, .0.share, .0.max, .0.holding
    )]
    OverShare(OverShare),
}

impl Unavailable {
    /// Whether herald is out of room (disk or memory): RFC 3463's "mail system full" (4.3.1).
    pub fn is_full(&self) -> bool {
        match self {
            Unavailable::Spool(e) => e.is_disk_full(),
            Unavailable::QueueFull { .. }
            | Unavailable::Building { .. }
            | Unavailable::OverShare(_) => true,
            Unavailable::Queueing(_) | Unavailable::Configuration(_) => false,
        }
    }

    /// Whether herald's own configuration is at fault (RFC 3463's "system incorrectly configured", 4.3.5).
    pub fn is_misconfigured(&self) -> bool {
        matches!(self, Unavailable::Configuration(_))
    }
}

impl From<Unavailable> for String {
    fn from(u: Unavailable) -> String {
        u.to_string()
    }
}

/// Why a domain cannot take notifications ([`Intake::check_domain`]). [`Intake::prepare`] refuses such a
/// submission with this text: [`Refusal::Temporary`] ([`Unavailable::Configuration`]) when
/// [`is_temporary`](DomainRefusal::is_temporary), else [`Refusal::Permanent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainRefusal {
    /// The recipient names no domain.
    #[error("no domain: the recipient must name the app's domain")]
    Missing,
    /// No `domain` stanza delivers this domain to APNs (unknown, another delivery method), or its credentials
    /// cannot be used.
    #[error("domain {domain:?} cannot take push notifications: {reason}")]
    NotPush {
        domain: String,
        #[source]
        reason: ResolveError,
    },
}

impl DomainRefusal {
    /// Whether the refusal lasts only until the operator fixes herald's side: the domain is configured for APNs,
    /// but its credentials ([`ResolveError::Credentials`]: `apn_key`, `tls_certificate`, … cannot be read or
    /// used) make its settings fail now, or its client certificate is outside its validity dates
    /// ([`ResolveError::Certificate`]: it must be renewed). Senders are told to retry rather than to drop the
    /// notifications.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            DomainRefusal::NotPush {
                reason: ResolveError::Credentials(_) | ResolveError::Certificate(_),
                ..
            }
        )
    }
}

impl From<DomainRefusal> for Refusal {
    fn from(d: DomainRefusal) -> Refusal {
        if d.is_temporary() {
            Refusal::Temporary(Unavailable::Configuration(d))
        } else {
            Refusal::Permanent(d.to_string())
        }
    }
}

/// Room taken for a batch before it is built ([`Intake::reserve`]) and handed to [`Intake::commit_reserved`];
/// what is not used is given back when it is dropped.
#[derive(Debug)]
pub struct Room(RoomKind);

#[derive(Debug)]
enum RoomKind {
    /// Memory in this engine's queue, where the batch goes once stored.
    Resident(Reservation),
    /// A share of the notifications this node builds at once, with a store that queues elsewhere, held until
    /// the batch is stored; `None` for an empty batch.
    Building {
        _share: Option<OwnedSemaphorePermit>,
    },
}

/// Why [`Intake::reserve`] took no room.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoRoom {
    /// The batch is larger than the engine ever holds in memory: it can never be taken as one, and the sender
    /// must split it (or the operator raise `max_resident_notifications`).
    #[error(
        "{wanted} notifications are more than herald ever holds in memory at once (max_resident_notifications = {max})"
    )]
    Never { wanted: usize, max: usize },
    /// Not now: retry later.
    #[error(transparent)]
    Now(Unavailable),
}

impl From<NoRoom> for Refusal {
    fn from(n: NoRoom) -> Refusal {
        match n {
            NoRoom::Never { .. } => Refusal::Permanent(n.to_string()),
            NoRoom::Now(why) => Refusal::Temporary(why),
        }
    }
}

/// Where and how a batch arrived, for the reception lines of the mainlog.
#[derive(Debug, Clone)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// `esmtp` or `rest` (docs/momentum-compat.md#mainlog).
    pub protocol: &'static str,
    pub batch_id: MessageId,
    pub conn_id: MessageId,
}

/// A boxed future, for object-safe traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What makes accepted notifications durable. The spool implements it; [`NotDurable`] is for tests.
pub trait Durable: Send + Sync + 'static {
    /// Resolves once every notification of `batch` is on disk; an error is temporary for the sender (and
    /// [`SpoolError::is_disk_full`] says whether storage is full).
    fn persist<'a>(&'a self, batch: &'a [Notification]) -> BoxFuture<'a, Result<(), SpoolError>>;

    /// True when a persisted notification reaches the queue through the store rather than straight from the
    /// intake (the JetStream spool: whichever node pulls it delivers it).
    fn queues_elsewhere(&self) -> bool {
        false
    }
}

/// Keeps nothing: for tests and benchmarks that exercise listeners without a spool. Never for production.
#[derive(Debug, Default)]
pub struct NotDurable;

impl Durable for NotDurable {
    fn persist<'a>(&'a self, _batch: &'a [Notification]) -> BoxFuture<'a, Result<(), SpoolError>> {
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
    /// Topics and senders, shared between the notifications that carry the same one.
    strings: Interner,
    /// With a store that queues elsewhere, the notifications being built and stored at once ([`Intake::reserve`]),
    /// at most [`Intake::building_max`].
    building: Arc<Semaphore>,
    building_max: usize,
}

/// Shares one allocation between equal strings of many notifications (topics, senders: few distinct values, each
/// repeated in up to millions of queued notifications). Bounded: it starts over when it holds [`Interner::MAX`].
#[derive(Debug, Default)]
struct Interner {
    set: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Interner {
    const MAX: usize = 4096;

    fn intern(&self, s: &str) -> Arc<str> {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = set.get(s) {
            return shared.clone();
        }
        if set.len() >= Self::MAX {
            set.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        set.insert(shared.clone());
        shared
    }
}

impl Intake {
    pub fn new(
        resolver: Arc<dyn SettingsResolver>,
        durable: Arc<dyn Durable>,
        engine: Arc<Engine>,
        ids: IdGenerator,
    ) -> Self {
        let building_max = engine.max_resident().clamp(1, Semaphore::MAX_PERMITS);
        Intake {
            resolver,
            durable,
            engine,
            ids,
            refused: std::sync::atomic::AtomicU64::new(0),
            strings: Interner::default(),
            building: Arc::new(Semaphore::new(building_max)),
            building_max,
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
        self.prepare_detailed(s, source).map_err(|r| r.refusal)
    }

    /// [`prepare`](Self::prepare), saying which option a refusal is about when it is one option's value
    /// ([`DoorRefusal::option`]), so that a listener can name it the way its sender gave it.
    pub fn prepare_detailed(
        &self,
        s: Submission,
        source: &Source,
    ) -> Result<Notification, DoorRefusal> {
        // A request a retry may repeat reuses the ids a refused attempt gave the same submissions.
        let fingerprint = crate::spool::retry_ids::fingerprint(&s);
        let mut result = self.validate(s, source);
        if let (Some(fingerprint), Ok(n)) = (fingerprint, &mut result) {
            crate::spool::retry_ids::assign(fingerprint, n);
        }
        if result.is_err() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Builds, on the blocking pool, the settings that [`check_domain`](Self::check_domain) (`binding` `None`),
    /// [`check_binding_domain`](Self::check_binding_domain) and [`prepare`](Self::prepare) will need for `domain`
    /// and do not find cached, so that those synchronous calls find them ready. Building settings can read
    /// credential files and sign a provider token: listeners call this first from their async code, and the
    /// synchronous calls build on the spot only what a reload dropped in between. A domain that cannot be
    /// delivered is left for the check to report; nothing is done once the runtime is stopping.
    pub async fn warm(&self, binding: Option<&str>, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() {
            return;
        }
        let default_ok = self
            .warm_one(binding.unwrap_or(DEFAULT_BINDING), &domain)
            .await;
        if binding.is_none() && !default_ok {
            // check_domain also accepts a domain that only another binding delivers.
            for other in self.resolver.bindings() {
                if other != DEFAULT_BINDING && self.warm_one(&other, &domain).await {
                    break;
                }
            }
        }
    }

    /// [`warm`](Self::warm) for one binding: whether the settings exist.
    async fn warm_one(&self, binding: &str, domain: &str) -> bool {
        if self.resolver.cached(binding, domain).is_some() {
            return true;
        }
        let resolver = self.resolver.clone();
        let (b, d) = (binding.to_owned(), domain.to_owned());
        crate::queue::run_blocking(move || resolver.resolve_binding(&b, &d).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Whether notifications for `domain` (any case) can be accepted: it must name a domain herald delivers to
    /// APNs. Listeners call it to refuse a recipient early (SMTP at `RCPT`); [`prepare`](Self::prepare) checks the
    /// same. Nothing is counted as refused here.
    /// Before the content says which binding delivers it, a domain that only some binding delivers (a domain
    /// stanza inside a binding) is accepted too; [`prepare`](Self::prepare) then checks the binding named.
    /// When no binding delivers it, the refusal is the first temporary one of any binding (a binding whose
    /// credentials for the domain cannot be read now: the operator can fix it, so the sender retries), else the
    /// `default` binding's.
    pub fn check_domain(&self, domain: &str) -> Result<(), DomainRefusal> {
        let Err(default) = self.settings_for(None, domain) else {
            return Ok(());
        };
        let mut temporary = default.is_temporary().then(|| default.clone());
        for binding in self.resolver.bindings() {
            if binding == DEFAULT_BINDING {
                continue;
            }
            match self.settings_for(Some(&binding), domain) {
                Ok(_) => return Ok(()),
                Err(e) if temporary.is_none() && e.is_temporary() => temporary = Some(e),
                Err(_) => {}
            }
        }
        Err(temporary.unwrap_or(default))
    }

    /// [`check_domain`](Self::check_domain) for delivery from `binding` (`None`: the `default` binding): the
    /// binding must be declared, and the domain deliverable from it.
    pub fn check_binding_domain(
        &self,
        binding: Option<&str>,
        domain: &str,
    ) -> Result<(), DomainRefusal> {
        self.settings_for(binding, domain).map(|_| ())
    }

    fn settings_for(
        &self,
        binding: Option<&str>,
        domain: &str,
    ) -> Result<Arc<DeliverySettings>, DomainRefusal> {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() {
            return Err(DomainRefusal::Missing);
        }
        let binding = binding.unwrap_or(DEFAULT_BINDING);
        // Settings kept from before may no longer do for new notifications (a client certificate expired since):
        // asked at every submission.
        let now = std::time::SystemTime::now();
        let settings = match self.resolver.cached_admitted(binding, &domain, now) {
            Some(admitted) => admitted,
            // Building settings may read credential files and sign a token: listeners [`warm`](Self::warm) the
            // cache off the async threads first, so this runs only for what a reload dropped since (or in tests
            // and tools that call the checks directly).
            None => crate::queue::in_place(|| self.resolver.resolve_binding(binding, &domain))
                .and_then(|s| {
                    self.resolver.admit(&s, now)?;
                    Ok(s)
                }),
        };
        settings.map_err(|reason| DomainRefusal::NotPush { domain, reason })
    }

    /// Refuses a payload larger than APNs takes for any push type, with the text [`prepare`](Self::prepare) refuses
    /// each notification carrying it with, for a listener that gives one payload to many notifications and refuses
    /// the request once instead. `headers` are the notifications' shared options. A payload within
    /// [`MAX_PAYLOAD_SIZE`] passes, to be checked per notification; so does one whose push type is given or named by
    /// the topic and is refused first for the route (a push type that needs token authentication, on a route
    /// without it), or whose push type [`prepare`](Self::prepare) refuses: each notification is then refused for
    /// that, without its payload being read.
    pub fn check_payload_size(
        &self,
        binding: Option<&str>,
        domain: &str,
        headers: &PushHeaders,
        size: usize,
    ) -> Result<(), Refusal> {
        if size <= MAX_PAYLOAD_SIZE {
            return Ok(());
        }
        let settings = self.settings_for(binding, domain)?;
        let given = match headers.push_type.as_deref().map(str::parse::<PushType>) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Ok(()),
            None => None,
        };
        let topic = headers
            .topic
            .as_deref()
            .or(settings.default_topic.as_deref());
        let protocol = route_protocol(&settings);
        let known = push_type_unread(given, topic);
        match payload_too_large(known, protocol, route_auth(protocol, &settings), size) {
            Some(text) => Err(Refusal::Permanent(text)),
            None => Ok(()),
        }
    }

    fn validate(&self, s: Submission, source: &Source) -> Result<Notification, DoorRefusal> {
        let settings = self.settings_for(s.binding.as_deref(), &s.domain)?;
        let protocol = route_protocol(&settings);
        let given = match s.headers.push_type.as_deref() {
            Some(t) => Some(
                t.parse::<PushType>()
                    .map_err(|e| DoorRefusal::option(ApnsOption::PushType, e, true))?,
            ),
            None => None,
        };
        let topic = s
            .headers
            .topic
            .as_deref()
            .or(settings.default_topic.as_deref());
        // Without a push type, the topic's suffix names it (the sender's topic, else the domain's), and only a bare
        // bundle id, or a suffix whose push type a payload that shows something overrides, leaves it to the payload
        // (docs/apns-protocol.md#push-types).
        let push_type = match push_type_unread(given, topic) {
            Some(t) => t,
            None => {
                // A payload larger than any push type allows is refused before it is read: inferring the push type
                // reads all of it, and one request may give the same payload to many notifications.
                if let Some(text) =
                    payload_too_large(None, protocol, RouteAuth::Token, s.payload.len())
                {
                    return Err(Refusal::Permanent(text).into());
                }
                #[cfg(test)]
                tests::PAYLOADS_READ.with(|n| n.set(n.get() + 1));
                infer_push_type_for(topic, &s.payload)
            }
        };
        let priority = match s.headers.priority {
            Some(p) => Priority::from_u8(p)
                .map_err(|e| DoorRefusal::option(ApnsOption::Priority, e, true))?,
            None => push_type.default_priority(),
        };
        let auth = route_auth(protocol, &settings);
        let default_topic = match s.headers.topic {
            Some(_) => None,
            None => default_topic(&settings, push_type, protocol, auth)?,
        };
        let parts = NotificationParts {
            token: &s.token,
            headers: &s.headers,
            default_topic: default_topic.as_deref(),
            push_type,
            priority,
            protocol,
            auth,
            payload: &s.payload,
        };
        let topic = parts.topic().map(|t| self.strings.intern(t));
        let token = validate_notification(&parts).map_err(|e| match settings.protocol {
            RouteProtocol::Binary(format) => DoorRefusal::binary_notification(e, format),
            RouteProtocol::Http2 => DoorRefusal::notification(e),
        })?;
        if let RouteProtocol::Binary(format) = settings.protocol {
            // What the binary protocol cannot carry is refused rather than dropped (docs/apns-protocol.md#binary-options):
            // a priority its format has no field for (APNs would take 10), and a collapse id.
            check_binary_format(format, priority, push_type == PushType::Background)
                .map_err(|e| DoorRefusal::option(ApnsOption::Priority, e, false))?;
            if s.headers.collapse_id.is_some() {
                return Err(DoorRefusal::option(
                    ApnsOption::CollapseId,
                    BINARY_COLLAPSE_ID,
                    false,
                ));
            }
        }
        // Every field is kept exactly as accepted: what APNs receives is what the sender gave.
        let expiration = match s.headers.expiration {
            Some(e) => Some(
                validate_expiration(e)
                    .map_err(|e| DoorRefusal::option(ApnsOption::Expiration, e, true))?,
            ),
            None => None,
        };
        // A push-to-talk push is delivered now or never (docs/apns-protocol.md §3.2.1): expiration 0, which is also
        // what it gets when the sender gives none (not the reception time + apn_expiry of the other types).
        let expiration = match (push_type, expiration) {
            (PushType::PushToTalk, Some(e)) if e != 0 => {
                return Err(DoorRefusal::option(
                    ApnsOption::Expiration,
                    format!("push-to-talk pushes must use expiration 0, not {e}"),
                    true,
                ));
            }
            (PushType::PushToTalk, None) => Some(0),
            (_, e) => e,
        };
        let apns_id = match s.headers.apns_id.as_deref() {
            Some(id) => Some(id.parse::<ApnsId>().map_err(DoorRefusal::header)?),
            None if protocol == Protocol::Http2 => {
                Some(ApnsId::from_bytes(uuid::Uuid::new_v4().into_bytes()))
            }
            None => None,
        };
        let recipient_given = Notification::given_recipient(&s.recipient, &token, &settings.domain);
        Ok(Notification {
            id: self.ids.next(),
            batch_id: source.batch_id,
            conn_id: source.conn_id,
            domain: settings.domain.clone(),
            binding: settings.binding.clone(),
            push: PushRequest {
                token,
                topic,
                push_type: Some(push_type),
                // As given; without one, the push type's default goes on the wire only where it is not APNs' own
                // (10): a background push says 5, since APNs would take a missing priority for 10.
                priority: (s.headers.priority.is_some() || priority != Priority::Immediate)
                    .then_some(priority),
                expiration,
                collapse_id: s.headers.collapse_id.map(Arc::from),
                apns_id,
                payload: s.payload,
            },
            sender: self.strings.intern(&s.sender),
            recipient_given,
            received_at: unix_now(),
        })
    }

    /// Whether the engine has room in memory for `n` more notifications now; a [`Refusal::Temporary`] naming
    /// `max_resident_notifications` if not. A snapshot, for an early answer (SMTP at `MAIL`): listeners take the
    /// room for a batch with [`Intake::reserve`] before they build it. With a store that queues elsewhere
    /// (JetStream) accepted notifications do not take this engine's memory (whichever node pulls them holds them,
    /// within its own limits): always room.
    pub fn has_room(&self, n: usize) -> Result<(), Refusal> {
        if self.durable.queues_elsewhere() || n <= self.engine.resident_room() {
            Ok(())
        } else {
            Err(self.queue_full(n))
        }
    }

    /// Takes the room a batch of `n` notifications needs before the listener builds it, to hand to
    /// [`Intake::commit_reserved`]: the engine's memory (as the commit would take it), or with a store that queues
    /// elsewhere a share of the notifications this node builds at once (as many as `max_resident_notifications`;
    /// a larger batch takes all of it, and waits for no other). [`NoRoom::Never`] when the engine can never hold
    /// `n` at once; [`NoRoom::Now`] (queue full, busy) when not now.
    pub fn reserve(&self, n: usize) -> Result<Room, NoRoom> {
        if self.durable.queues_elsewhere() {
            let take = n.min(self.building_max);
            if take == 0 {
                return Ok(Room(RoomKind::Building { _share: None }));
            }
            return u32::try_from(take)
                .ok()
                .and_then(|t| self.building.clone().try_acquire_many_owned(t).ok())
                .map(|p| Room(RoomKind::Building { _share: Some(p) }))
                .ok_or_else(|| {
                    NoRoom::Now(Unavailable::Building {
                        building: self
                            .building_max
                            .saturating_sub(self.building.available_permits()),
                        max: self.building_max,
                        wanted: n,
                    })
                });
        }
        self.can_ever_hold(n)?;
        match self.engine.try_reserve(n) {
            Some(r) => Ok(Room(RoomKind::Resident(r))),
            None => Err(NoRoom::Now(self.queue_full_now(n))),
        }
    }

    /// [`NoRoom::Never`] when a batch of `n` notifications is larger than the engine ever holds in memory at once
    /// (`max_resident_notifications`): no retry takes it. A listener whose batch turns out larger than the room it
    /// reserved (a message of several push parts) asks this before building more. With a store that queues
    /// elsewhere accepted notifications take none of this engine's memory: any batch can be held.
    pub fn can_ever_hold(&self, n: usize) -> Result<(), NoRoom> {
        let max = self.engine.max_resident();
        if self.durable.queues_elsewhere() || n <= max {
            Ok(())
        } else {
            Err(NoRoom::Never { wanted: n, max })
        }
    }

    /// The binding group `n` is delivered from, for its R line: the group of its binding's settings under the
    /// configuration in force, for the default binding as for any other (a `binding_group` may declare
    /// `binding "default"`, and the D line names that group). The door checks built them, but a reload, an idle
    /// queue's retirement or the bound on settings kept may have dropped them since: then they are built again,
    /// so the R line names the group the D line will. `None` (`default`, whatever group the configuration declares
    /// for the binding) when they can no longer be built: the binding no longer delivers the domain (a reload
    /// removed it), or its credentials cannot be read. A batch looks each (binding, domain) up once, with
    /// [`BindingGroups`].
    fn binding_group(&self, n: &Notification) -> Option<Arc<str>> {
        let settings = match self.resolver.cached(&n.binding, &n.domain) {
            Some(settings) => settings,
            None => crate::queue::in_place(|| self.resolver.resolve_binding(&n.binding, &n.domain))
                .ok()?,
        };
        Some(settings.binding_group.clone())
    }

    fn queue_full(&self, n: usize) -> Refusal {
        Refusal::Temporary(self.queue_full_now(n))
    }

    fn queue_full_now(&self, n: usize) -> Unavailable {
        Unavailable::QueueFull {
            held: self
                .engine
                .max_resident()
                .saturating_sub(self.engine.resident_room()),
            max: self.engine.max_resident(),
            wanted: n,
        }
    }

    /// Makes `batch` durable, then logs and queues it. When this returns `Ok`, the sender may be told yes. A
    /// batch the engine has no room for in memory is refused ([`Refusal::Temporary`], back-pressure) before
    /// anything is stored; one larger than the engine ever holds is a [`Refusal::Permanent`] (no retry takes it):
    /// a listener that answers that one differently asks [`Intake::commit_within`].
    ///
    /// Once started, a commit runs to its end on a task of its own, even when the caller stops waiting for it (a
    /// client that hangs up mid-request drops its handler): a batch the spool has taken is always queued as well,
    /// never left in the spool until the next start.
    pub async fn commit(
        self: &Arc<Self>,
        batch: Vec<Notification>,
        source: &Source,
    ) -> Result<(), Refusal> {
        self.commit_with(batch, source, None)
            .await
            .map_err(Refusal::from)
    }

    /// [`Intake::commit`] of a batch built within `room`, taken by [`Intake::reserve`] before it was built: the
    /// engine's memory is already taken, so the batch is not refused for want of it.
    pub async fn commit_reserved(
        self: &Arc<Self>,
        batch: Vec<Notification>,
        source: &Source,
        room: Room,
    ) -> Result<(), Refusal> {
        self.commit_within(batch, source, room)
            .await
            .map_err(Refusal::from)
    }

    /// [`Intake::commit_reserved`], telling the two refusals apart as [`Intake::reserve`] does: [`NoRoom::Never`]
    /// when the batch is larger than the engine ever holds (it turned out larger than the room taken for it: a
    /// message of several push parts), [`NoRoom::Now`] when herald cannot take it now.
    pub async fn commit_within(
        self: &Arc<Self>,
        batch: Vec<Notification>,
        source: &Source,
        room: Room,
    ) -> Result<(), NoRoom> {
        self.commit_with(batch, source, Some(room)).await
    }

    async fn commit_with(
        self: &Arc<Self>,
        batch: Vec<Notification>,
        source: &Source,
        room: Option<Room>,
    ) -> Result<(), NoRoom> {
        if batch.is_empty() {
            return Ok(());
        }
        let intake = self.clone();
        let source = source.clone();
        // The request's ids go with the batch to the spool (`retry_ids`).
        let ids = crate::spool::retry_ids::current();
        let commit = async move { intake.commit_here(batch, &source, room).await };
        match tokio::spawn(crate::spool::retry_ids::within(ids, commit)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(NoRoom::Now(Unavailable::Queueing(
                SubmitError::ShuttingDown,
            ))),
        }
    }

    /// [`Intake::commit`]'s work, in the caller's task. `room` (the building share, or the engine's memory) is
    /// held until the batch is stored, or queued.
    async fn commit_here(
        &self,
        batch: Vec<Notification>,
        source: &Source,
        room: Option<Room>,
    ) -> Result<(), NoRoom> {
        if self.durable.queues_elsewhere() {
            self.durable
                .persist(&batch)
                .await
                .map_err(|e| NoRoom::Now(Unavailable::Spool(e)))?;
            let logs = self.engine.logs().clone();
            let mut groups = BindingGroups::new(self);
            for n in &batch {
                logs.reception(
                    n,
                    source.ip,
                    source.protocol,
                    groups.of(n).as_deref().unwrap_or(DEFAULT_BINDING_GROUP),
                );
                self.engine.count_received(n);
                self.engine.entered_stream(n);
            }
            return Ok(());
        }
        // A batch larger than the engine ever holds is refused for good: no retry would find room for it.
        if let Err(never) = self.can_ever_hold(batch.len()) {
            self.refused
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            return Err(never);
        }
        // A domain of the batch that would pass its share of memory while herald is at least half full refuses the
        // batch, before anything is stored or more room is taken.
        if let Some(over) = self.engine.over_share(distinct_domains(&batch)) {
            self.refused
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            return Err(NoRoom::Now(Unavailable::OverShare(over)));
        }
        // Room for the whole batch is taken before anything is stored: a batch built within less room than it
        // turned out to need (an injection renders a message of several parts into more notifications than it has
        // recipients) takes the rest now or is refused, as once stored it must be queued without waiting.
        let reserved = match room {
            Some(Room(RoomKind::Resident(mut r))) if r.len() < batch.len() => {
                self.engine.try_reserve(batch.len() - r.len()).map(|more| {
                    r.merge(more);
                    r
                })
            }
            Some(Room(RoomKind::Resident(r))) => Some(r),
            _ => self.engine.try_reserve(batch.len()),
        };
        let Some(mut room) = reserved else {
            self.refused
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            return Err(NoRoom::Now(self.queue_full_now(batch.len())));
        };
        self.durable
            .persist(&batch)
            .await
            .map_err(|e| NoRoom::Now(Unavailable::Spool(e)))?;
        let logs = self.engine.logs().clone();
        let mut groups = BindingGroups::new(self);
        for n in &batch {
            logs.reception(
                n,
                source.ip,
                source.protocol,
                groups.of(n).as_deref().unwrap_or(DEFAULT_BINDING_GROUP),
            );
        }
        // The batch is durable and its receptions are logged: from here the sender is told yes whatever happens,
        // as a "try again" would have it send notifications the spool already holds a second time. One the engine
        // cannot queue now (a reload removed its domain meanwhile, or herald is stopping) stays in the spool and
        // is queued again at the next start.
        for n in batch {
            let id = n.id;
            if let Err(e) = self.engine.submit_reserved(n, &mut room).await {
                tracing::warn!(
                    "notification {id} is in the spool but could not be queued now ({e}); a start whose \
                     configuration delivers its domain queues it"
                );
            }
        }
        Ok(())
    }
}

/// The protocol a domain's route speaks to APNs.
fn route_protocol(settings: &DeliverySettings) -> Protocol {
    match settings.protocol {
        RouteProtocol::Http2 => Protocol::Http2,
        RouteProtocol::Binary(_) => Protocol::Binary,
    }
}

/// How a domain's route proves itself to APNs: a domain with a signing key sends provider tokens (HTTP/2 only); any
/// other route its client certificate, which some push types do not take (docs/apns-protocol.md#rule-10).
fn route_auth(protocol: Protocol, settings: &DeliverySettings) -> RouteAuth {
    match (protocol, &settings.auth) {
        (Protocol::Http2, Some(_)) => RouteAuth::Token,
        _ => RouteAuth::Certificate,
    }
}

/// The push type of a notification when it is known without reading its payload: the one given, else the one
/// `topic`'s suffix names, unless that is a suffix ([`infer_push_type_for`]) whose push type a payload that shows
/// something (`alert`, `badge`, `sound`) turns into an alert or background push. `None`: the payload decides.
fn push_type_unread(given: Option<PushType>, topic: Option<&str>) -> Option<PushType> {
    match given.or_else(|| topic.and_then(PushType::from_topic_suffix)) {
        Some(PushType::Voip | PushType::PushToTalk | PushType::Complication) if given.is_none() => {
            None
        }
        known => known,
    }
}

/// The refusal of a payload of `size` bytes when it is larger than any push type allows ([`MAX_PAYLOAD_SIZE`]),
/// found without reading it. `known` is the push type when it is known without reading the payload
/// ([`push_type_unread`]): the refusal then names it and its limit over `protocol`, in the words of the payload
/// checks, or there is none here when the push type is refused first for a route authenticated by `auth` (one that
/// needs token authentication: the binary protocol never has it). Without a known push type, the refusal names
/// none, in the words the MCMT reader uses for the same size.
fn payload_too_large(
    known: Option<PushType>,
    protocol: Protocol,
    auth: RouteAuth,
    size: usize,
) -> Option<String> {
    if size <= MAX_PAYLOAD_SIZE {
        return None;
    }
    match known {
        Some(push_type)
            if push_type.requires_token_auth()
                && (protocol == Protocol::Binary || auth == RouteAuth::Certificate) =>
        {
            None
        }
        Some(push_type) => Some(
            PayloadError::TooLarge {
                size,
                limit: push_type.payload_limit(protocol),
                push_type,
                protocol,
            }
            .to_string(),
        ),
        None => Some(format!(
            "payload is {size} bytes; no APNs push allows more than {MAX_PAYLOAD_SIZE} (VoIP pushes over HTTP/2; \
             other pushes allow less)"
        )),
    }
}

/// The binding groups of one batch's R lines ([`Intake::binding_group`]), each (binding, domain) looked up at most
/// once: settings that must be built again (reading credential files), or cannot be, are not built again for every
/// notification of the batch, between its being stored and its sender's answer.
struct BindingGroups<'a> {
    intake: &'a Intake,
    /// binding → domain → group.
    known: HashMap<Arc<str>, GroupOfDomain>,
}

/// The binding group (`None`: `default`) of each domain, under one binding.
type GroupOfDomain = HashMap<Arc<str>, Option<Arc<str>>>;

impl<'a> BindingGroups<'a> {
    fn new(intake: &'a Intake) -> Self {
        BindingGroups {
            intake,
            known: HashMap::new(),
        }
    }

    fn of(&mut self, n: &Notification) -> Option<Arc<str>> {
        if let Some(group) = self
            .known
            .get(&*n.binding)
            .and_then(|domains| domains.get(&*n.domain))
        {
            return group.clone();
        }
        let group = self.intake.binding_group(n);
        self.known
            .entry(n.binding.clone())
            .or_default()
            .insert(n.domain.clone(), group.clone());
        group
    }
}

/// The domains of `batch`, each once with how many of the batch's notifications it has: most batches are of one
/// domain, counted without a map.
fn distinct_domains(batch: &[Notification]) -> Vec<(&str, usize)> {
    let Some(first) = batch.first() else {
        return Vec::new();
    };
    if batch.iter().all(|n| n.domain == first.domain) {
        return vec![(&first.domain, batch.len())];
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for n in batch {
        *counts.entry(&n.domain).or_insert(0) += 1;
    }
    let mut domains: Vec<(&str, usize)> = counts.into_iter().collect();
    domains.sort_unstable();
    domains
}

/// The topic of a notification whose sender named none (docs/apns-protocol.md#http2-request, `apns-topic`), or why
/// there is none to send.
///
/// The topic is made of the domain's `apn_topic` (usually the bare bundle id), else, on HTTP/2, the bundle id of the
/// domain's client certificate: a push type with a suffix gets the bundle id plus its suffix ([`derive_topic`]),
/// alert, background and mdm the topic as it is. So on a certificate route without `apn_topic`, alert, background
/// and mdm pushes name the certificate's bundle id (its UID) as their topic: APNs takes the certificate's bundle id
/// for a request without a topic only when the certificate lists at most one topic, and answers `MissingTopic` for
/// one that lists several (the standard "Sandbox & Production" certificate lists the app, `.voip` and
/// `.complication`). A token route must always send a topic (APNs answers `MissingTopic` without one), and a push
/// type with a suffix needs one on any HTTP/2 route (the bare bundle id APNs would otherwise use is
/// `TopicDisallowed` for it): when neither `apn_topic` nor a certificate gives a bundle id, the notification is
/// refused here, naming the two ways to give one, rather than accepted to fail for good at APNs. A certificate
/// route whose certificate names no bundle id sends an alert, background or mdm push without a topic, as APNs is
/// left to judge the certificate. The binary protocol carries no topic (the certificate decides), so nothing is
/// refused for it there.
///
/// A push type that only token-authenticated connections take (location, liveactivity:
/// [`PushType::requires_token_auth`]) gets no topic on a certificate route, from `apn_topic` or from the
/// certificate: no topic makes it deliverable there, and the checks that follow refuse it for its route, naming
/// the signing key it lacks (docs/apns-protocol.md#rule-10, docs/live-activities.md).
fn default_topic(
    settings: &DeliverySettings,
    push_type: PushType,
    protocol: Protocol,
    auth: RouteAuth,
) -> Result<Option<String>, Refusal> {
    if auth == RouteAuth::Certificate && push_type.requires_token_auth() {
        return Ok(None);
    }
    let apn_topic = settings.default_topic.as_deref();
    let bundle = apn_topic.or(settings.certificate_topic.as_deref());
    let needs_topic = protocol == Protocol::Http2
        && (auth == RouteAuth::Token || push_type.topic_suffix().is_some());
    match (push_type.topic_suffix(), bundle) {
        (Some(_), Some(base)) => Ok(Some(derive_topic(base, push_type))),
        (None, _) if apn_topic.is_some() => Ok(apn_topic.map(str::to_owned)),
        (None, Some(base)) => Ok(Some(base.to_owned())),
        _ if needs_topic => Err(Refusal::Permanent(missing_topic(
            &settings.domain,
            push_type,
            auth,
        ))),
        _ => Ok(None),
    }
}

/// Why a notification has no topic to send, and what gives it one ([`default_topic`]).
fn missing_topic(domain: &str, push_type: PushType, auth: RouteAuth) -> String {
    let why = match (auth, push_type.topic_suffix()) {
        (RouteAuth::Token, _) => {
            "its route authenticates with a provider token (apn_key), for which APNs requires \
             a topic (it would refuse the notification with MissingTopic)"
                .to_owned()
        }
        (RouteAuth::Certificate, Some(suffix)) => format!(
            "push type {push_type} needs the app's bundle id followed by {suffix:?}, and its client certificate names \
             no bundle id to make it of"
        ),
        (RouteAuth::Certificate, None) => "its client certificate names no bundle id".to_owned(),
    };
    let example = match push_type.topic_suffix() {
        Some(suffix) => format!("<bundle id>{suffix}"),
        None => "<bundle id>".to_owned(),
    };
    format!(
        "apns-topic: the notification names no topic and domain {domain:?} has no apn_topic to take it from; {why}. \
         Give the notification its topic (REST \"topic\", MCMT X-APNs-Topic, herald send --topic), e.g. \
         \"{example}\", or set apn_topic = \"<bundle id>\" in the domain's configuration"
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn equal_topics_and_senders_share_one_allocation() {
        let strings = Interner::default();
        let a = strings.intern("com.example.app");
        let b = strings.intern(&String::from("com.example.app"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &strings.intern("com.example.other")));
        for i in 0..Interner::MAX + 1 {
            strings.intern(&i.to_string());
        }
        assert!(
            strings.set.lock().unwrap().len() <= Interner::MAX,
            "bounded"
        );
        assert_eq!(&*strings.intern("com.example.app"), "com.example.app");
    }

    use std::time::Duration;

    use super::*;
    use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};

    thread_local! {
        /// Payloads [`Intake::prepare`] has read to infer a push type, on this thread.
        pub(super) static PAYLOADS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A payload larger than any push type allows is refused by its size, without being read to infer its push
    /// type: when the push type is not known without reading the payload, in words that name none (the MCMT
    /// reader's, for the same size); when it is given or named by the topic, in the payload checks' words for it.
    /// One within the limits is read as before. A listener giving one payload to many notifications gets the same
    /// refusal once.
    #[test]
    fn a_payload_too_large_for_any_push_type_is_refused_unread() {
        let intake = intake();
        let source = source(&intake);
        let submission = |payload: Vec<u8>, headers: PushHeaders| Submission {
            domain: "apps.example".into(),
            token: "ab".repeat(32),
            payload: Bytes::from(payload),
            headers,
            ..Submission::default()
        };
        let padded = |aps: &str, size: usize| {
            let mut p = format!(r#"{{"aps":{aps},"pad":""#).into_bytes();
            p.resize(size - 2, b'x');
            p.extend_from_slice(b"\"}");
            p
        };
        let background = |size: usize| padded(r#"{"content-available":1}"#, size);
        let alert = |size: usize| padded(r#"{"alert":"hi"}"#, size);
        let unnamed = |size: usize| {
            crate::inbound::mcmt::PartError::PayloadTooLarge {
                size,
                limit: crate::inbound::mcmt::MAX_PAYLOAD,
            }
            .to_string()
        };
        assert_eq!(
            unnamed(5121),
            "payload is 5121 bytes; no APNs push allows more than 5120 (VoIP pushes over HTTP/2; other pushes \
             allow less)"
        );
        let read = || PAYLOADS_READ.with(|n| n.get());
        let before = read();
        let voip_topic = PushHeaders {
            topic: Some("com.example.app.voip".into()),
            ..PushHeaders::default()
        };
        // Neither a bare bundle id nor a VoIP topic names the push type of a payload that could show something (or
        // not): the refusal names none, whatever the payload turns out to hold.
        for (payload, headers) in [
            (background(MAX_PAYLOAD_SIZE + 1), PushHeaders::default()),
            (alert(MAX_PAYLOAD_SIZE + 1), PushHeaders::default()),
            (alert(MAX_PAYLOAD_SIZE + 1), voip_topic.clone()),
            (background(MAX_PAYLOAD_SIZE + 1), voip_topic.clone()),
        ] {
            let refused = intake
                .prepare(submission(payload, headers.clone()), &source)
                .unwrap_err();
            assert!(
                matches!(&refused, Refusal::Permanent(t) if *t == unnamed(5121)),
                "{refused:?}"
            );
            assert_eq!(
                intake
                    .check_payload_size(None, "apps.example", &headers, 5121)
                    .map_err(|r| r.to_string()),
                Err(unnamed(5121))
            );
        }
        assert_eq!(read(), before, "the payload was read");
        // The push type given, or named by a topic whose suffix the payload cannot override, names the limit.
        let given = |push_type: &str, topic: &str| PushHeaders {
            push_type: Some(push_type.into()),
            topic: Some(topic.into()),
            ..PushHeaders::default()
        };
        for (headers, push_type, limit) in [
            (given("voip", "com.example.app.voip"), "voip", 5120),
            (given("alert", "com.example.app.voip"), "alert", 4096),
            (given("background", "com.example.app"), "background", 4096),
            (
                PushHeaders {
                    topic: Some("com.example.app.push-type.widgets".into()),
                    ..PushHeaders::default()
                },
                "widgets",
                4096,
            ),
        ] {
            let text = format!(
                "payload is 6000 bytes; {push_type} pushes over HTTP/2 allow at most {limit}"
            );
            let refused = intake
                .prepare(submission(alert(6000), headers.clone()), &source)
                .unwrap_err();
            assert!(
                matches!(&refused, Refusal::Permanent(t) if *t == text),
                "{refused:?}"
            );
            assert_eq!(
                intake
                    .check_payload_size(None, "apps.example", &headers, 6000)
                    .map_err(|r| r.to_string()),
                Err(text)
            );
            assert!(
                intake
                    .check_payload_size(None, "apps.example", &headers, MAX_PAYLOAD_SIZE)
                    .is_ok()
            );
        }
        assert_eq!(read(), before, "the payload was read");
        // Within the limit of some push type, the payload decides as before.
        let n = intake
            .prepare(
                submission(background(1000), PushHeaders::default()),
                &source,
            )
            .unwrap();
        assert_eq!(n.push.push_type, Some(PushType::Background));
        assert_eq!(read(), before + 1);
        let refused = intake
            .prepare(
                submission(background(MAX_PAYLOAD_SIZE), PushHeaders::default()),
                &source,
            )
            .unwrap_err();
        assert!(
            matches!(&refused, Refusal::Permanent(t)
                if t == "payload is 5120 bytes; background pushes over HTTP/2 allow at most 4096"),
            "{refused:?}"
        );
    }

    /// What the binary protocol cannot carry is refused at the door as a refusal of its option, never dropped
    /// (docs/apns-protocol.md#binary-options): on a domain whose binary format has no priority field (enhanced), a
    /// priority other than 10 and a background push (its default priority 5, or 10 asked for); on any binary domain
    /// a collapse id. The frame format takes priority 5 and background pushes.
    #[test]
    fn what_the_binary_format_cannot_carry_is_refused_as_its_option() {
        let mut enhanced = settings("enhanced.example");
        enhanced.protocol = RouteProtocol::Binary(BinaryFormat::Enhanced);
        let mut frame = settings("frame.example");
        frame.protocol = RouteProtocol::Binary(BinaryFormat::Frame);
        let resolver = Arc::new(StaticResolver::default().with(enhanced).with(frame));
        let (_, engine) = engine();
        let intake = Intake::new(resolver, Arc::new(NotDurable), engine, IdGenerator::new(1));
        let alert = r#"{"aps":{"alert":"x"}}"#;
        let silent = r#"{"aps":{"content-available":1}}"#;
        let submit = |domain: &str, payload: &'static str, headers: PushHeaders| {
            let s = Submission {
                domain: domain.into(),
                token: "ab".repeat(32),
                payload: Bytes::from_static(payload.as_bytes()),
                headers,
                ..Submission::default()
            };
            intake.prepare_detailed(s, &source(&intake))
        };
        let priority = |p: Option<u8>| PushHeaders {
            priority: p,
            ..PushHeaders::default()
        };
        let no_priority = "priority 5 is not allowed here: this domain sends the enhanced (command 1) binary format, \
                           which has no priority field: APNs would take the notification as priority 10. Send \
                           priority 10 (or none), or set apn_binary_format = frame for the domain, whose format \
                           carries the priority";
        let background = |p: u8| {
            format!(
                "priority {p} is not allowed here: a background push (only content-available in aps) must use \
                 priority 5, and this domain sends the enhanced (command 1) binary format, which has no priority \
                 field: APNs would take it as priority 10. Background pushes need the frame format: set \
                 apn_binary_format = frame for the domain"
            )
        };
        let background_typed = PushHeaders {
            push_type: Some("background".into()),
            ..PushHeaders::default()
        };
        for (payload, headers, why) in [
            (alert, priority(Some(5)), no_priority.to_owned()),
            (silent, priority(None), background(5)),
            (silent, priority(Some(5)), background(5)),
            (silent, priority(Some(10)), background(10)),
            (alert, background_typed, background(5)),
        ] {
            let refused = submit("enhanced.example", payload, headers.clone()).unwrap_err();
            assert_eq!(
                refused.option,
                Some(OptionRefusal {
                    option: ApnsOption::Priority,
                    why: why.clone()
                }),
                "{payload} {headers:?}"
            );
            assert!(
                matches!(&refused.refusal, Refusal::Permanent(t) if *t == why),
                "{refused:?}"
            );
            // The frame format carries the priority: the same notification is taken, with its priority.
            let n = submit("frame.example", payload, headers.clone());
            if headers.priority == Some(10) {
                // Priority 10 for a content-available-only push breaks rule 4 in any format.
                assert!(n.is_err(), "{payload} {headers:?}");
            } else {
                assert_eq!(
                    n.map(|n| n.push.priority).ok(),
                    Some(Some(Priority::Conserve)),
                    "{payload} {headers:?}"
                );
            }
        }
        // Priority 10, given or by default, is what the enhanced format sends.
        for p in [None, Some(10)] {
            let n = submit("enhanced.example", alert, priority(p)).unwrap();
            assert_eq!(n.push.priority, p.map(|_| Priority::Immediate));
        }
        // A collapse id, in either format.
        for domain in ["enhanced.example", "frame.example"] {
            let headers = PushHeaders {
                collapse_id: Some("c".into()),
                ..PushHeaders::default()
            };
            let refused = submit(domain, alert, headers).unwrap_err();
            assert_eq!(
                refused.option,
                Some(OptionRefusal {
                    option: ApnsOption::CollapseId,
                    why: BINARY_COLLAPSE_ID.to_owned()
                }),
                "{domain}"
            );
        }
    }

    /// A push type refused for its route before its payload's size (one that needs token authentication, on a
    /// certificate or binary route) is refused for that whatever the payload's size, as a small payload is: the
    /// size check steps aside, and the payload is not read.
    #[test]
    fn a_push_type_its_route_refuses_is_refused_for_that_at_any_size() {
        use herald_apns::binary::BinaryFormat;
        let mut binary = settings("binary.example");
        binary.protocol = RouteProtocol::Binary(BinaryFormat::Frame);
        let resolver = Arc::new(
            StaticResolver::default()
                .with(binary)
                .with(settings("cert.example")),
        );
        let (_, engine) = engine();
        let intake = Intake::new(resolver, Arc::new(NotDurable), engine, IdGenerator::new(1));
        let source = source(&intake);
        let read = || PAYLOADS_READ.with(|n| n.get());
        let before = read();
        for (domain, headers) in [
            (
                "binary.example",
                PushHeaders {
                    push_type: Some("liveactivity".into()),
                    ..PushHeaders::default()
                },
            ),
            (
                "binary.example",
                PushHeaders {
                    topic: Some("com.example.app.push-type.liveactivity".into()),
                    ..PushHeaders::default()
                },
            ),
            (
                "cert.example",
                PushHeaders {
                    push_type: Some("location".into()),
                    ..PushHeaders::default()
                },
            ),
        ] {
            let refuse = |size: usize| {
                let s = Submission {
                    domain: domain.into(),
                    token: "ab".repeat(32),
                    payload: Bytes::from(vec![b' '; size]),
                    headers: headers.clone(),
                    ..Submission::default()
                };
                match intake.prepare(s, &source) {
                    Err(Refusal::Permanent(t)) => t,
                    other => panic!("{other:?}"),
                }
            };
            let small = refuse(100);
            assert!(
                small.contains("needs token (JWT) authentication"),
                "{small}"
            );
            if domain == "binary.example" {
                assert!(
                    small.contains("route the domain to an https:// host"),
                    "{small}"
                );
            }
            assert_eq!(refuse(6000), small, "{headers:?}");
            assert!(
                intake
                    .check_payload_size(None, domain, &headers, 6000)
                    .is_ok()
            );
        }
        assert_eq!(read(), before, "the payload was read");
    }

    fn settings(domain: &str) -> DeliverySettings {
        DeliverySettings::for_tests(domain, 1)
    }

    /// An engine delivering apps.example (to a closed port), and its resolver.
    fn engine() -> (Arc<StaticResolver>, Arc<Engine>) {
        let resolver = Arc::new(StaticResolver::default().with(settings("apps.example")));
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        (resolver, engine)
    }

    fn intake() -> Intake {
        let (resolver, engine) = engine();
        Intake::new(resolver, Arc::new(NotDurable), engine, IdGenerator::new(1))
    }

    fn source(intake: &Intake) -> Source {
        Source {
            ip: None,
            protocol: "esmtp",
            batch_id: intake.next_id(),
            conn_id: intake.next_id(),
        }
    }

    #[test]
    fn check_domain_is_typed_and_case_insensitive() {
        let intake = intake();
        assert_eq!(intake.check_domain("apps.example"), Ok(()));
        assert_eq!(intake.check_domain("Apps.EXAMPLE"), Ok(()));
        assert_eq!(intake.check_domain(""), Err(DomainRefusal::Missing));
        let err = intake.check_domain("Unknown.example").unwrap_err();
        assert_eq!(
            err,
            DomainRefusal::NotPush {
                domain: "unknown.example".into(),
                reason: ResolveError::UnknownDomain("unknown.example".into()),
            }
        );
        assert_eq!(
            err.to_string(),
            "domain \"unknown.example\" cannot take push notifications: no domain stanza for \"unknown.example\" in the configuration"
        );
        assert_eq!(intake.refused(), 0, "a check is not a refusal");
    }

    /// A refusal of one option's value says which option it is about, with the reason in words that do not name
    /// the option's field, for a listener to name it as its sender gave it; the text every listener gives is the
    /// door's own, unchanged. A refusal of anything else is about no option.
    #[test]
    fn a_refused_options_value_is_named_by_its_option() {
        let intake = intake();
        let alert = r#"{"aps":{"alert":"x"}}"#;
        let submit = |payload: &'static str, headers: PushHeaders| {
            let s = Submission {
                domain: "apps.example".into(),
                token: "ab".repeat(32),
                payload: Bytes::from_static(payload.as_bytes()),
                headers,
                ..Submission::default()
            };
            intake.prepare_detailed(s, &source(&intake))
        };
        let given = |set: fn(&mut PushHeaders)| {
            let mut h = PushHeaders::default();
            set(&mut h);
            h
        };
        let cases: [(&str, PushHeaders, ApnsOption, &str, &str); 11] = [
            (
                alert,
                given(|h| h.collapse_id = Some(" x".into())),
                ApnsOption::CollapseId,
                "",
                "apns-collapse-id \" x\" must be printable ASCII without leading or trailing spaces (no control \
                 characters), which an HTTP/2 header carries unchanged",
            ),
            (
                alert,
                given(|h| h.collapse_id = Some("c".repeat(65))),
                ApnsOption::CollapseId,
                "",
                "apns-collapse-id is 65 bytes; at most 64 are allowed",
            ),
            (
                alert,
                given(|h| h.topic = Some(String::new())),
                ApnsOption::Topic,
                "",
                "apns-topic is empty",
            ),
            (
                alert,
                given(|h| {
                    h.topic = Some("com.example.app".into());
                    h.push_type = Some("voip".into());
                }),
                ApnsOption::Topic,
                "",
                "apns-topic \"com.example.app\" does not end in \".voip\", which push type voip needs",
            ),
            (
                alert,
                given(|h| h.push_type = Some("bogus".into())),
                ApnsOption::PushType,
                "push_type: ",
                "unknown apns-push-type \"bogus\"",
            ),
            (
                alert,
                given(|h| h.priority = Some(7)),
                ApnsOption::Priority,
                "priority: ",
                "apns-priority must be 10, 5 or 1, not \"7\"",
            ),
            (
                r#"{"aps":{"content-available":1}}"#,
                given(|h| h.priority = Some(10)),
                ApnsOption::Priority,
                "",
                "priority 10 is not allowed here: background pushes must use priority 5",
            ),
            (
                alert,
                given(|h| h.expiration = Some(1 << 32)),
                ApnsOption::Expiration,
                "",
                "apns-expiration 4294967296 is out of range: at most 4294967295 (seconds since the epoch, 32 bits)",
            ),
            (
                r#"{"aps":{}}"#,
                given(|h| {
                    h.push_type = Some("pushtotalk".into());
                    h.topic = Some("com.example.app.voip-ptt".into());
                    h.expiration = Some(5);
                }),
                ApnsOption::Expiration,
                "expiration: ",
                "push-to-talk pushes must use expiration 0, not 5",
            ),
            (
                alert,
                given(|h| h.apns_id = Some("nope".into())),
                ApnsOption::ApnsId,
                "",
                "apns-id \"nope\" is not a canonical 8-4-4-4-12 UUID",
            ),
            (
                alert,
                given(|h| h.apns_id = Some("123E4567-E89B-12D3-A456-426614174000".into())),
                ApnsOption::ApnsId,
                "",
                "apns-id \"123E4567-E89B-12D3-A456-426614174000\" has uppercase hex digits; APNs takes the \
                 canonical lowercase form",
            ),
        ];
        for (payload, headers, option, named, why) in cases {
            let refused = submit(payload, headers.clone()).unwrap_err();
            assert_eq!(
                refused.option,
                Some(OptionRefusal {
                    option,
                    why: why.to_owned()
                }),
                "{headers:?}"
            );
            match (
                &refused.refusal,
                intake.prepare(
                    Submission {
                        domain: "apps.example".into(),
                        token: "ab".repeat(32),
                        payload: Bytes::from_static(payload.as_bytes()),
                        headers: headers.clone(),
                        ..Submission::default()
                    },
                    &source(&intake),
                ),
            ) {
                (Refusal::Permanent(text), Err(Refusal::Permanent(same))) => {
                    assert_eq!(*text, format!("{named}{why}"), "{headers:?}");
                    assert_eq!(same, *text, "{headers:?}");
                }
                other => panic!("{headers:?}: {other:?}"),
            }
        }
        // The token, the payload: no option.
        let mut bad_token = Submission {
            domain: "apps.example".into(),
            token: "zz".repeat(32),
            payload: Bytes::from_static(alert.as_bytes()),
            ..Submission::default()
        };
        let refused = intake
            .prepare_detailed(bad_token.clone(), &source(&intake))
            .unwrap_err();
        assert!(refused.option.is_none(), "{refused:?}");
        bad_token.token = "ab".repeat(32);
        bad_token.payload = Bytes::from_static(b"[]");
        let refused = intake
            .prepare_detailed(bad_token, &source(&intake))
            .unwrap_err();
        assert!(refused.option.is_none(), "{refused:?}");
    }

    /// What an option's value alone tells: a value refused whatever the push type, in the door's words for it;
    /// one refused only with some push types passes.
    #[test]
    fn an_options_value_is_refused_alone_only_when_no_push_type_takes_it() {
        for (option, value, why) in [
            (ApnsOption::Topic, "", "apns-topic is empty"),
            (
                ApnsOption::Topic,
                "com.example app",
                "apns-topic \"com.example app\" has characters outside printable ASCII",
            ),
            (
                ApnsOption::PushType,
                "Alert",
                "unknown apns-push-type \"Alert\"",
            ),
            (
                ApnsOption::CollapseId,
                "trail ",
                "apns-collapse-id \"trail \" must be printable ASCII without leading or trailing spaces (no \
                 control characters), which an HTTP/2 header carries unchanged",
            ),
            (
                ApnsOption::Priority,
                "300",
                "apns-priority must be 10, 5 or 1, not \"300\"",
            ),
            (
                ApnsOption::Expiration,
                "1e3",
                "apns-expiration \"1e3\" is not a decimal count of seconds since the epoch",
            ),
            (
                ApnsOption::ApnsId,
                "x",
                "apns-id \"x\" is not a canonical 8-4-4-4-12 UUID",
            ),
        ] {
            assert_eq!(
                option.refused_alone(value).as_deref(),
                Some(why),
                "{option:?} {value:?}"
            );
        }
        for (option, value) in [
            (ApnsOption::Topic, "com.example.app.voip"),
            (ApnsOption::Topic, "com.example.app.push-type.liveactivity"),
            (ApnsOption::PushType, "liveactivity"),
            (ApnsOption::CollapseId, "c"),
            (ApnsOption::Priority, "10"),
            (ApnsOption::Expiration, "4294967295"),
            (ApnsOption::ApnsId, "123e4567-e89b-12d3-a456-426614174000"),
        ] {
            assert_eq!(option.refused_alone(value), None, "{option:?} {value:?}");
        }
        let fields: Vec<_> = ApnsOption::ALL.iter().map(|o| o.field()).collect();
        assert_eq!(
            fields,
            [
                "topic",
                "push_type",
                "priority",
                "expiration",
                "collapse_id",
                "apns_id"
            ]
        );
    }

    /// docs/apns-protocol.md §3.2.1: a background push goes out at priority 5 also when its sender gave none (APNs
    /// takes a missing priority for 10, an error for background), and a push-to-talk push at priority 10 with
    /// expiration 0.
    #[test]
    fn background_says_priority_5_and_push_to_talk_is_delivered_now_or_never() {
        use herald_apns::push::Priority;
        let intake = intake();
        let submit = |payload: &'static str,
                      push_type: Option<&str>,
                      priority: Option<u8>,
                      expiration: Option<u64>| {
            let mut s = Submission {
                domain: "apps.example".into(),
                token: "ab".repeat(32),
                payload: Bytes::from_static(payload.as_bytes()),
                ..Submission::default()
            };
            s.headers.push_type = push_type.map(str::to_owned);
            s.headers.priority = priority;
            s.headers.expiration = expiration;
            if push_type == Some("pushtotalk") {
                s.headers.topic = Some("com.example.app.voip-ptt".into());
            }
            intake.prepare(s, &source(&intake))
        };
        let silent = r#"{"aps":{"content-available":1}}"#;
        for push_type in [None, Some("background")] {
            let n = submit(silent, push_type, None, None).unwrap();
            assert_eq!(n.push.priority, Some(Priority::Conserve), "{push_type:?}");
        }
        // Other types without a priority leave it to APNs' default, 10.
        let n = submit(r#"{"aps":{"alert":"x"}}"#, None, None, None).unwrap();
        assert_eq!(n.push.priority, None);

        let talk = r#"{"aps":{}}"#;
        let n = submit(talk, Some("pushtotalk"), None, None).unwrap();
        assert_eq!((n.push.priority, n.push.expiration), (None, Some(0)));
        let n = submit(talk, Some("pushtotalk"), Some(10), Some(0)).unwrap();
        assert_eq!(n.push.expiration, Some(0));
        for (priority, expiration, want) in [
            (
                None,
                Some(1_900_000_000),
                "push-to-talk pushes must use expiration 0",
            ),
            (Some(5), None, "push-to-talk pushes must use priority 10"),
        ] {
            match submit(talk, Some("pushtotalk"), priority, expiration) {
                Err(Refusal::Permanent(why)) => assert!(why.contains(want), "{why}"),
                other => panic!("{priority:?}/{expiration:?}: {other:?}"),
            }
        }
    }

    /// docs/apns-protocol.md#rule-10, docs/live-activities.md: a location or Live Activity push is refused at the
    /// door for a domain whose route authenticates with a client certificate (HTTP/2 without a signing key, or any
    /// binary route), with or without a topic, naming the push type and the route, and accepted for a domain that
    /// sends provider tokens.
    #[test]
    fn token_only_pushes_are_refused_at_the_door_unless_the_domain_uses_token_auth() {
        use herald_apns::binary::BinaryFormat;
        use herald_apns::provider_token::{ProviderTokenCache, SigningKey};
        let dir = tempfile::tempdir().unwrap();
        let pki = herald_sim::Pki::generate(dir.path(), &[]).unwrap();
        let key = &pki.manifest.token_key;
        let signing = SigningKey::from_p8_file(&key.p8, &key.key_id, &key.team_id).unwrap();
        let mut token = settings("token.example");
        token.auth = Some(ProviderTokenCache::new(signing, Duration::from_secs(3000)).unwrap());
        token.default_topic = Some(Arc::from("com.example.app"));
        let mut certificate = settings("cert.example");
        certificate.default_topic = None;
        certificate.certificate_topic = Some(Arc::from("com.example.app"));
        let mut bare = settings("bare-cert.example");
        bare.default_topic = None;
        let mut binary = settings("binary.example");
        binary.protocol = RouteProtocol::Binary(BinaryFormat::Frame);
        let resolver = Arc::new(
            StaticResolver::default()
                .with(certificate)
                .with(bare)
                .with(token)
                .with(binary),
        );
        let (_, engine) = engine();
        let intake = Intake::new(resolver, Arc::new(NotDurable), engine, IdGenerator::new(1));
        let submit =
            |domain: &str, push_type: PushType, topic: Option<&str>, payload: &'static [u8]| {
                let mut s = Submission {
                    domain: domain.into(),
                    token: "ab".repeat(32),
                    payload: Bytes::from_static(payload),
                    ..Submission::default()
                };
                s.headers.push_type = Some(push_type.to_string());
                s.headers.topic = topic.map(str::to_owned);
                intake.prepare(s, &source(&intake))
            };
        let cases: [(PushType, &str, &'static [u8]); 2] = [
            (
                PushType::Location,
                "com.example.app.location-query",
                br#"{"aps":{}}"#,
            ),
            (
                PushType::LiveActivity,
                "com.example.app.push-type.liveactivity",
                br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#,
            ),
        ];
        let mut refusals = 0;
        for (push_type, suffixed, payload) in cases {
            for topic in [Some(suffixed), None] {
                let accepted = submit("token.example", push_type, topic, payload).unwrap();
                assert_eq!(accepted.push.push_type, Some(push_type));
                assert_eq!(accepted.push.topic.as_deref(), Some(suffixed));
                // A certificate that names a bundle id, one that names none (no topic can be made: the route is
                // still what is wrong), and a binary route.
                for (domain, route) in [
                    (
                        "cert.example",
                        "HTTP/2 route authenticates with a client certificate",
                    ),
                    (
                        "bare-cert.example",
                        "HTTP/2 route authenticates with a client certificate",
                    ),
                    ("binary.example", "routed to the binary protocol"),
                ] {
                    match submit(domain, push_type, topic, payload) {
                        Err(Refusal::Permanent(why)) => assert!(
                            why.starts_with(&format!(
                                "push type {push_type} needs token (JWT) authentication"
                            )) && why.contains(route)
                                && why.contains("apn_key"),
                            "{domain} {topic:?}: {why}"
                        ),
                        other => panic!("{push_type} {domain} {topic:?}: {other:?}"),
                    }
                    refusals += 1;
                }
            }
        }
        assert_eq!(intake.refused(), refusals);

        // Without a push type, the payload never makes a Live Activity (docs/apns-protocol.md#push-types): an aps
        // with event and timestamp is an alert. With nothing to show it is refused on an HTTP/2 route, saying it
        // looks like a Live Activity and naming the push type to give; with an alert it goes as one, to the bare
        // topic or over the binary protocol, as it always did. Only a `.push-type.liveactivity` topic names the
        // push type without the sender.
        let untyped = |domain: &str, topic: Option<&str>, payload: &'static [u8]| {
            let mut s = Submission {
                domain: domain.into(),
                token: "ab".repeat(32),
                payload: Bytes::from_static(payload),
                ..Submission::default()
            };
            s.headers.topic = topic.map(str::to_owned);
            intake.prepare(s, &source(&intake))
        };
        let update: &[u8] =
            br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#;
        match untyped("token.example", None, update) {
            Err(Refusal::Permanent(why)) => assert!(
                why.starts_with("an alert push needs alert, badge or sound in aps")
                    && why.contains("looks like a Live Activity")
                    && why.contains("push type liveactivity")
                    && why.contains("HTTP/2 with token authentication"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let with_alert: &[u8] = br#"{"aps":{"alert":"x","event":"update","timestamp":1700000000}}"#;
        let alert = untyped("token.example", None, with_alert).unwrap();
        assert_eq!(alert.push.push_type, Some(PushType::Alert));
        assert_eq!(alert.push.topic.as_deref(), Some("com.example.app"));
        let binary_era = untyped("binary.example", None, with_alert).unwrap();
        assert_eq!(binary_era.push.push_type, Some(PushType::Alert));
        let suffixed = untyped(
            "token.example",
            Some("com.example.app.push-type.liveactivity"),
            update,
        )
        .unwrap();
        assert_eq!(suffixed.push.push_type, Some(PushType::LiveActivity));
    }

    /// docs/apns-protocol.md#push-types: a notification without a topic takes `apn_topic`, else the certificate's
    /// bundle id, with its push type's suffix; where no topic can be made and one is needed (a token route, a push
    /// type with a suffix on HTTP/2), it is refused, naming the topic and the two ways to give one.
    #[test]
    fn topics_are_derived_for_every_suffix_or_the_notification_is_refused() {
        let topic = |apn_topic: Option<&str>,
                     certificate: Option<&str>,
                     push_type: PushType,
                     protocol: Protocol,
                     auth: RouteAuth| {
            let mut s = settings("apps.example");
            s.default_topic = apn_topic.map(Arc::from);
            s.certificate_topic = certificate.map(Arc::from);
            default_topic(&s, push_type, protocol, auth).map_err(|r| r.to_string())
        };
        use Protocol::*;
        use PushType::*;
        use RouteAuth::*;
        for p in PushType::ALL {
            let suffixed = herald_apns::push::topic_for("com.x", p);
            // From apn_topic, on any route; a push type certificates cannot send gets none on a certificate route,
            // where it is refused for its route instead.
            for (protocol, auth) in [(Http2, Token), (Http2, Certificate), (Binary, Certificate)] {
                let want = if auth == Certificate && p.requires_token_auth() {
                    None
                } else {
                    Some(suffixed.clone())
                };
                assert_eq!(
                    topic(Some("com.x"), None, p, protocol, auth),
                    Ok(want),
                    "{p} {protocol:?} {auth:?}"
                );
            }
            // From the certificate's bundle id, for every type the certificate can send: alert, background and
            // mdm get the bare bundle id, since APNs answers MissingTopic to a request without a topic on a
            // certificate that lists several topics.
            let from_certificate = topic(None, Some("com.x"), p, Http2, Certificate);
            if p.requires_token_auth() {
                assert_eq!(from_certificate, Ok(None), "{p}: refused for its route");
            } else {
                assert_eq!(from_certificate, Ok(Some(suffixed.clone())), "{p}");
            }
            if p.topic_suffix().is_none() {
                assert_eq!(suffixed, "com.x", "{p}: the bare bundle id");
            }
            assert_eq!(
                topic(None, Some("com.x"), p, Http2, Token),
                Ok(Some(suffixed))
            );
            // No bundle id at all: a token route refuses every type, a certificate route those with a suffix that
            // it can send (the others are refused for their route).
            let refused = |auth| match topic(None, None, p, Http2, auth) {
                Err(why) => {
                    assert!(
                        why.starts_with("apns-topic: the notification names no topic")
                            && why.contains("\"apps.example\" has no apn_topic")
                            && why.contains("REST \"topic\"")
                            && why.contains("set apn_topic")
                            && !why.contains("  "),
                        "{p} {auth:?}: {why}"
                    );
                    true
                }
                Ok(None) => false,
                Ok(t) => panic!("{p} {auth:?}: {t:?}"),
            };
            assert!(refused(Token), "{p}");
            assert_eq!(
                refused(Certificate),
                p.topic_suffix().is_some() && !p.requires_token_auth(),
                "{p}"
            );
            // The binary protocol carries no topic: nothing to refuse.
            assert_eq!(topic(None, None, p, Binary, Certificate), Ok(None), "{p}");
        }
        let why = topic(None, None, Voip, Http2, Certificate).unwrap_err();
        assert!(
            why.contains("\".voip\"") && why.contains("<bundle id>.voip"),
            "{why}"
        );
        let why = topic(None, None, Alert, Http2, Token).unwrap_err();
        assert!(
            why.contains("MissingTopic") && why.contains("apn_key"),
            "{why}"
        );
        // A domain topic with another type's suffix gives its bundle id the right one.
        assert_eq!(
            topic(Some("com.x.voip"), None, LiveActivity, Http2, Token),
            Ok(Some("com.x.push-type.liveactivity".into()))
        );
        assert_eq!(
            topic(
                Some("com.x.push-type.liveactivity"),
                None,
                LiveActivity,
                Http2,
                Token
            ),
            Ok(Some("com.x.push-type.liveactivity".into()))
        );
    }

    /// docs/apns-protocol.md#push-types: without a push type, the topic's suffix decides (the sender's topic, else
    /// the domain's), so a VoIP payload without `aps` to a `.voip` topic is accepted as voip, with VoIP's 5120
    /// bytes.
    #[test]
    fn the_push_type_is_guessed_from_the_topic_first() {
        let voip_payload = format!(r#"{{"callId":"{}"}}"#, "c".repeat(4500));
        let mut voip_domain = settings("voip.example");
        voip_domain.default_topic = Some(Arc::from("com.x.voip"));
        let resolver = Arc::new(
            StaticResolver::default()
                .with(settings("apps.example"))
                .with(voip_domain),
        );
        let (_, engine) = engine();
        let intake = Intake::new(resolver, Arc::new(NotDurable), engine, IdGenerator::new(1));
        let submit = |domain: &str, topic: Option<&str>, payload: &str| {
            let mut s = Submission {
                domain: domain.into(),
                token: "ab".repeat(32),
                payload: Bytes::from(payload.to_owned()),
                ..Submission::default()
            };
            s.headers.topic = topic.map(str::to_owned);
            intake.prepare(s, &source(&intake))
        };
        for (domain, topic) in [("apps.example", Some("com.x.voip")), ("voip.example", None)] {
            let n = submit(domain, topic, &voip_payload).unwrap();
            assert_eq!(n.push.push_type, Some(PushType::Voip), "{domain}");
            assert_eq!(n.push.topic.as_deref(), Some("com.x.voip"), "{domain}");
        }
        let n = submit("apps.example", Some("com.x.voip-ptt"), r#"{"aps":{}}"#).unwrap();
        assert_eq!(n.push.push_type, Some(PushType::PushToTalk));
        assert_eq!(n.push.expiration, Some(0));
        // A bare bundle id leaves it to the payload.
        let n = submit("apps.example", None, r#"{"aps":{"content-available":1}}"#).unwrap();
        assert_eq!(n.push.push_type, Some(PushType::Background));
        let n = submit("apps.example", Some("com.x"), r#"{"aps":{"alert":"x"}}"#).unwrap();
        assert_eq!(n.push.push_type, Some(PushType::Alert));
    }

    #[test]
    fn prepare_refuses_an_unknown_domain_with_the_check_s_text() {
        let intake = intake();
        let submission = Submission {
            domain: "unknown.example".into(),
            token: "ab".repeat(32),
            payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            ..Submission::default()
        };
        let refusal = intake.prepare(submission, &source(&intake)).unwrap_err();
        let expected: Refusal = intake.check_domain("unknown.example").unwrap_err().into();
        assert!(
            matches!((&refusal, &expected), (Refusal::Permanent(a), Refusal::Permanent(b)) if a == b),
            "{refusal:?} / {expected:?}"
        );
        assert_eq!(intake.refused(), 1);
    }

    /// A resolver that stops in the middle of building `slow.example` (as a cache miss reading credential files
    /// and signing a token does) until the test lets it go on.
    struct SlowResolver {
        fast: StaticResolver,
        entered: std::sync::mpsc::SyncSender<()>,
        gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl SettingsResolver for SlowResolver {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            if domain == "slow.example" {
                let _ = self.entered.send(());
                let _ = self
                    .gate
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60));
                return Ok(Arc::new(settings("slow.example")));
            }
            self.fast.resolve(domain)
        }
    }

    /// A resolver that caches what it builds and records the thread of every build.
    #[derive(Default)]
    struct CachingResolver {
        cache: std::sync::Mutex<std::collections::HashMap<String, Arc<DeliverySettings>>>,
        builds: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    }

    impl SettingsResolver for CachingResolver {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            self.builds
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            if domain != "apps.example" {
                return Err(ResolveError::UnknownDomain(domain.to_owned()));
            }
            let built = Arc::new(settings(domain));
            self.cache
                .lock()
                .unwrap()
                .insert(domain.to_owned(), built.clone());
            Ok(built)
        }

        fn cached(&self, binding: &str, domain: &str) -> Option<Arc<DeliverySettings>> {
            (binding == DEFAULT_BINDING)
                .then(|| self.cache.lock().unwrap().get(domain).cloned())
                .flatten()
        }
    }

    /// Listeners warm the settings cache off the async threads: the synchronous checks that follow find the
    /// settings built, and no build (credential files, token signing) ran on the runtime's own thread.
    #[tokio::test(flavor = "current_thread")]
    async fn warm_builds_settings_off_the_async_thread_and_the_checks_find_them() {
        let resolver = Arc::new(CachingResolver::default());
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        let intake = Intake::new(
            resolver.clone(),
            Arc::new(NotDurable),
            engine,
            IdGenerator::new(1),
        );
        let runtime_thread = std::thread::current().id();
        intake.warm(None, "Apps.Example").await;
        intake.warm(None, "unknown.example").await;
        assert_eq!(intake.check_domain("apps.example"), Ok(()));
        assert!(intake.check_domain("unknown.example").is_err());
        let submission = Submission {
            domain: "apps.example".into(),
            token: "ab".repeat(32),
            payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            ..Submission::default()
        };
        intake.prepare(submission, &source(&intake)).unwrap();
        let builds = resolver.builds.lock().unwrap().clone();
        // apps.example once (then cached), unknown.example by warm and again by its check (failures are not
        // cached).
        assert_eq!(builds.len(), 3, "{builds:?}");
        assert!(
            builds[..2].iter().all(|t| *t != runtime_thread),
            "warm built on the runtime's thread: {builds:?}"
        );
    }

    /// docs/architecture.md: the engine's lock is not held while a queue's settings are built, so one domain's
    /// slow first notification does not stop submissions to other domains.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_settings_build_does_not_stop_other_domains() {
        let both = Arc::new(
            StaticResolver::default()
                .with(settings("slow.example"))
                .with(settings("fast.example")),
        );
        let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(1);
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let slow = Arc::new(SlowResolver {
            fast: StaticResolver::default().with(settings("fast.example")),
            entered: entered_tx,
            gate: std::sync::Mutex::new(gate_rx),
        });
        let engine = Arc::new(Engine::new(
            slow,
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        engine.set_held(true);
        let intake = Intake::new(
            both,
            Arc::new(NotDurable),
            engine.clone(),
            IdGenerator::new(1),
        );
        let notification = |domain: &str| {
            let submission = Submission {
                domain: domain.into(),
                token: "ab".repeat(32),
                payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                ..Submission::default()
            };
            intake.prepare(submission, &source(&intake)).unwrap()
        };
        let slow_n = notification("slow.example");
        let fast_n = notification("fast.example");
        let slow_engine = engine.clone();
        let slow_task = tokio::spawn(async move { slow_engine.submit(slow_n).await });
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("the slow build started");
        // While slow.example's settings are being built, fast.example is queued (on a runtime thread of its own,
        // so that a submitter blocked on the engine's lock is seen here as a deadline passed, not a hang).
        let fast_engine = engine.clone();
        let fast_task = tokio::spawn(async move { fast_engine.submit(fast_n).await });
        tokio::time::timeout(Duration::from_secs(30), fast_task)
            .await
            .expect("fast.example waited for slow.example's settings")
            .unwrap()
            .unwrap();
        gate_tx.send(()).unwrap();
        slow_task.await.unwrap().unwrap();
        assert_eq!(engine.queues().len(), 2);
    }

    /// A store whose accepted notifications are queued by whichever node pulls them (as JetStream's).
    struct Elsewhere;

    impl Durable for Elsewhere {
        fn persist<'a>(
            &'a self,
            _batch: &'a [Notification],
        ) -> BoxFuture<'a, Result<(), SpoolError>> {
            Box::pin(async { Ok(()) })
        }

        fn queues_elsewhere(&self) -> bool {
            true
        }
    }

    fn small_engine(resolver: Arc<StaticResolver>, max_resident: usize) -> Arc<Engine> {
        Arc::new(Engine::new(
            resolver,
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident,
                ..EngineLimits::default()
            },
        ))
    }

    /// A batch larger than the engine ever holds is refused for good at its commit, whatever room was reserved
    /// for it, and nothing of it is stored: no retry would take it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_larger_than_the_engine_ever_holds_is_refused_for_good() {
        let (resolver, _) = engine();
        let engine = small_engine(resolver.clone(), 10);
        engine.set_held(true);
        let intake = Arc::new(Intake::new(
            resolver,
            Arc::new(NotDurable),
            engine.clone(),
            IdGenerator::new(1),
        ));
        assert!(intake.can_ever_hold(10).is_ok());
        assert!(matches!(
            intake.can_ever_hold(11),
            Err(NoRoom::Never {
                wanted: 11,
                max: 10
            })
        ));
        let source = source(&intake);
        let batch: Vec<_> = (0..11)
            .map(|i| {
                let submission = Submission {
                    domain: "apps.example".into(),
                    token: format!("{i:02x}").repeat(32),
                    payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                    ..Submission::default()
                };
                intake.prepare(submission, &source).unwrap()
            })
            .collect();
        // Told apart from a refusal for now, as at the reservation: listeners answer it as they answer that.
        let room = intake.reserve(5).unwrap();
        let refused = intake.commit_within(batch.clone(), &source, room).await;
        assert!(
            matches!(
                &refused,
                Err(NoRoom::Never {
                    wanted: 11,
                    max: 10
                })
            ),
            "{refused:?}"
        );
        assert_eq!(engine.resident_room(), 10, "nothing taken");
        // For a listener that answers it as any other permanent refusal, the same text.
        let room = intake.reserve(5).unwrap();
        let refused = intake.commit_reserved(batch, &source, room).await;
        assert!(
            matches!(&refused, Err(Refusal::Permanent(t)) if t == "11 notifications are more than herald ever \
                holds in memory at once (max_resident_notifications = 10)"),
            "{refused:?}"
        );
        assert_eq!(engine.resident_room(), 10, "nothing taken");
    }

    /// The room a batch needs is taken before it is built: a second batch finds it taken; one larger than the
    /// engine ever holds is refused for good; a committed batch keeps the room it took (no second reservation).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn room_is_taken_before_a_batch_is_built_and_carried_into_its_commit() {
        let (resolver, _) = engine();
        let engine = small_engine(resolver.clone(), 10);
        engine.set_held(true);
        let intake = Arc::new(Intake::new(
            resolver,
            Arc::new(NotDurable),
            engine.clone(),
            IdGenerator::new(1),
        ));
        assert!(matches!(
            intake.reserve(11),
            Err(NoRoom::Never {
                wanted: 11,
                max: 10
            })
        ));
        let room = intake.reserve(6).unwrap();
        assert_eq!(engine.resident_room(), 4);
        assert!(matches!(
            intake.reserve(6),
            Err(NoRoom::Now(Unavailable::QueueFull {
                held: 6,
                max: 10,
                wanted: 6
            }))
        ));
        let source = source(&intake);
        let batch: Vec<_> = (0..6)
            .map(|i| {
                let submission = Submission {
                    domain: "apps.example".into(),
                    token: format!("{i:02x}").repeat(32),
                    payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                    ..Submission::default()
                };
                intake.prepare(submission, &source).unwrap()
            })
            .collect();
        intake.commit_reserved(batch, &source, room).await.unwrap();
        assert_eq!(
            engine.resident_room(),
            4,
            "held by the queued notifications"
        );
        // Room not used is given back.
        drop(intake.reserve(4).unwrap());
        assert_eq!(engine.resident_room(), 4);
    }

    /// While herald is at least half full, a batch that would take a domain past its share (what the other known
    /// domains need leaves, [`Engine::over_share`]) is refused before it is stored, naming the domain, while another
    /// domain is still taken up to the maximum; a batch of several domains is refused for the one over its share.
    /// With one domain known, it fills the engine as before, up to the queue-full refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_over_its_share_is_refused_while_others_are_taken() {
        let resolver = Arc::new(
            StaticResolver::default()
                .with(settings("apps.example"))
                .with(settings("other.example")),
        );
        let commit = |intake: Arc<Intake>, domains: Vec<&'static str>| async move {
            let source = source(&intake);
            let batch: Vec<_> = domains
                .iter()
                .map(|domain| {
                    let submission = Submission {
                        domain: (*domain).into(),
                        token: "ab".repeat(32),
                        payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                        ..Submission::default()
                    };
                    intake.prepare(submission, &source).unwrap()
                })
                .collect();
            intake.commit(batch, &source).await
        };
        // One domain alone fills the engine, then the queue is full.
        let engine = small_engine(resolver.clone(), 10);
        engine.set_held(true);
        let intake = Arc::new(Intake::new(
            resolver.clone(),
            Arc::new(NotDurable),
            engine.clone(),
            IdGenerator::new(1),
        ));
        for _ in 0..10 {
            commit(intake.clone(), vec!["apps.example"]).await.unwrap();
        }
        assert!(matches!(
            commit(intake.clone(), vec!["apps.example"]).await,
            Err(Refusal::Temporary(Unavailable::QueueFull { held: 10, .. }))
        ));
        // Beside another known domain holding one (it needs a reserve of 10 / 4 = 2), apps.example stops at
        // its share of 8.
        let engine = small_engine(resolver.clone(), 10);
        engine.set_held(true);
        let intake = Arc::new(Intake::new(
            resolver,
            Arc::new(NotDurable),
            engine.clone(),
            IdGenerator::new(1),
        ));
        commit(intake.clone(), vec!["other.example"]).await.unwrap();
        for _ in 0..8 {
            commit(intake.clone(), vec!["apps.example"]).await.unwrap();
        }
        let refused = intake.refused();
        let over = OverShare {
            domain: "apps.example".into(),
            held: 8,
            wanted: 1,
            share: 8,
            max: 10,
            holding: 2,
        };
        match commit(intake.clone(), vec!["apps.example"]).await {
            Err(Refusal::Temporary(why @ Unavailable::OverShare(_))) => {
                assert!(why.is_full());
                assert_eq!(
                    why.to_string(),
                    "domain apps.example holds 8 notifications in memory, and 1 more would pass its share (8 of \
                     max_resident_notifications = 10, shared by 2 domains while herald is at least half full): \
                     its deliveries are not keeping up; other domains are still accepted; retry later"
                );
                assert!(matches!(why, Unavailable::OverShare(o) if o == over));
            }
            other => panic!("not refused for its share: {other:?}"),
        }
        assert_eq!(intake.refused(), refused + 1);
        assert_eq!(engine.resident_room(), 1, "nothing of it taken");
        // A batch of both domains is refused for apps.example.
        match commit(intake.clone(), vec!["other.example", "apps.example"]).await {
            Err(Refusal::Temporary(Unavailable::OverShare(o))) => assert_eq!(o, over),
            other => panic!("not refused for apps.example's share: {other:?}"),
        }
        // other.example is taken up to the maximum, and then the queue is full.
        commit(intake.clone(), vec!["other.example"]).await.unwrap();
        assert_eq!(engine.resident_in("other.example"), 2);
        assert!(matches!(
            commit(intake.clone(), vec!["other.example"]).await,
            Err(Refusal::Temporary(Unavailable::QueueFull { held: 10, .. }))
        ));
    }

    /// With a store that queues elsewhere the engine's memory is not taken, but what is built at once is bounded
    /// like it: a batch larger than the bound takes all of it rather than never fitting.
    #[test]
    fn with_a_store_that_queues_elsewhere_what_is_built_at_once_is_bounded() {
        let (resolver, _) = engine();
        let engine = small_engine(resolver.clone(), 10);
        let intake = Intake::new(
            resolver,
            Arc::new(Elsewhere),
            engine.clone(),
            IdGenerator::new(1),
        );
        let first = intake.reserve(6).unwrap();
        assert_eq!(engine.resident_room(), 10);
        let refused = intake.reserve(6).unwrap_err();
        assert!(
            matches!(
                refused,
                NoRoom::Now(Unavailable::Building {
                    building: 6,
                    max: 10,
                    wanted: 6
                })
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("max_resident_notifications = 10")
        );
        drop(first);
        let all = intake.reserve(25).unwrap();
        assert!(intake.reserve(1).is_err());
        drop(all);
        assert!(intake.reserve(0).is_ok());
    }

    /// A resolver that delivers apps.example from bindings `default` (of binding group `gdef`) and `b` (of binding
    /// group `g`), and keeps nothing built: [`SettingsResolver::cached`] never answers, as after a reload, an idle
    /// queue's retirement or the bound on settings kept.
    struct NothingKept;

    impl SettingsResolver for NothingKept {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            self.resolve_binding(DEFAULT_BINDING, domain)
        }

        fn bindings(&self) -> Vec<String> {
            vec![DEFAULT_BINDING.to_owned(), "b".to_owned()]
        }

        fn resolve_binding(
            &self,
            binding: &str,
            domain: &str,
        ) -> Result<Arc<DeliverySettings>, ResolveError> {
            if domain != "apps.example" {
                return Err(ResolveError::UnknownDomain(domain.to_owned()));
            }
            let mut built = settings(domain);
            match binding {
                DEFAULT_BINDING => built.binding_group = Arc::from("gdef"),
                "b" => {
                    built.binding = Arc::from("b");
                    built.binding_group = Arc::from("g");
                }
                other => return Err(ResolveError::UnknownBinding(other.to_owned())),
            }
            Ok(Arc::new(built))
        }
    }

    /// The R line names the binding group from the configuration in force, whether or not the settings the door
    /// checks built are still kept: it says `g`, as the D line will, not `default`; and the group that declares
    /// the default binding (`gdef`) for a notification that names no binding.
    #[test]
    fn the_binding_group_of_the_r_line_does_not_depend_on_settings_kept() {
        let (_, engine) = engine();
        let intake = Intake::new(
            Arc::new(NothingKept),
            Arc::new(NotDurable),
            engine,
            IdGenerator::new(1),
        );
        let submission = |binding: Option<&str>| Submission {
            domain: "apps.example".into(),
            token: "ab".repeat(32),
            payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            binding: binding.map(str::to_owned),
            ..Submission::default()
        };
        let from_b = intake
            .prepare(submission(Some("b")), &source(&intake))
            .unwrap();
        assert_eq!(&*from_b.binding, "b");
        assert_eq!(intake.binding_group(&from_b).as_deref(), Some("g"));
        let from_default = intake.prepare(submission(None), &source(&intake)).unwrap();
        assert_eq!(&*from_default.binding, DEFAULT_BINDING);
        assert_eq!(intake.binding_group(&from_default).as_deref(), Some("gdef"));
        let mut groups = BindingGroups::new(&intake);
        assert_eq!(groups.of(&from_default).as_deref(), Some("gdef"));
    }

    /// A resolver that delivers apps.example from binding `b` (of binding group `g`) and keeps nothing built, until
    /// its credentials can no longer be read (`broken`); it counts the settings it builds or fails to build.
    #[derive(Default)]
    struct CountedCredentials {
        broken: std::sync::atomic::AtomicBool,
        resolved: std::sync::atomic::AtomicUsize,
    }

    impl SettingsResolver for CountedCredentials {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            self.resolve_binding(DEFAULT_BINDING, domain)
        }

        fn resolve_binding(
            &self,
            binding: &str,
            domain: &str,
        ) -> Result<Arc<DeliverySettings>, ResolveError> {
            use std::sync::atomic::Ordering::Relaxed;
            self.resolved.fetch_add(1, Relaxed);
            if self.broken.load(Relaxed) {
                return Err(ResolveError::Credentials(
                    "apn_key: cannot read key.p8".into(),
                ));
            }
            let mut built = settings(domain);
            built.binding = Arc::from(binding);
            built.binding_group = Arc::from("g");
            Ok(Arc::new(built))
        }
    }

    /// The R lines of a batch look each (binding, domain) up once: settings that cannot be built (credentials that
    /// can no longer be read) are not tried again, reading the files, for every notification between the batch
    /// being stored and its answer; such a notification's R line says `default`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_resolves_each_binding_group_once() {
        use std::sync::atomic::Ordering::Relaxed;
        let (_, engine) = engine();
        let resolver = Arc::new(CountedCredentials::default());
        let intake = Arc::new(Intake::new(
            resolver.clone(),
            Arc::new(NotDurable),
            engine,
            IdGenerator::new(1),
        ));
        let source = source(&intake);
        let batch: Vec<_> = (0..5)
            .map(|i| {
                let submission = Submission {
                    domain: "apps.example".into(),
                    token: format!("{i:02x}").repeat(32),
                    payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                    binding: Some("b".into()),
                    ..Submission::default()
                };
                intake.prepare(submission, &source).unwrap()
            })
            .collect();
        let mut groups = BindingGroups::new(&intake);
        let before = resolver.resolved.load(Relaxed);
        for n in &batch {
            assert_eq!(groups.of(n).as_deref(), Some("g"));
        }
        assert_eq!(resolver.resolved.load(Relaxed) - before, 1);

        resolver.broken.store(true, Relaxed);
        let mut groups = BindingGroups::new(&intake);
        assert_eq!(groups.of(&batch[0]), None);
        let before = resolver.resolved.load(Relaxed);
        assert!(intake.commit(batch, &source).await.is_ok());
        assert_eq!(resolver.resolved.load(Relaxed) - before, 1);
    }

    /// Every binding's refusal of one domain, for [`Intake::check_domain`]: `default` does not deliver it by APNs,
    /// binding `b` does not know it, binding `keyed` cannot read its credentials (when `keyed_ok` is false), and
    /// binding `later`, after it, delivers it when `later_ok`.
    struct PerBinding {
        keyed_ok: bool,
        later_ok: bool,
    }

    impl SettingsResolver for PerBinding {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            self.resolve_binding(DEFAULT_BINDING, domain)
        }

        fn bindings(&self) -> Vec<String> {
            [DEFAULT_BINDING, "b", "keyed", "later"]
                .map(str::to_owned)
                .to_vec()
        }

        fn resolve_binding(
            &self,
            binding: &str,
            domain: &str,
        ) -> Result<Arc<DeliverySettings>, ResolveError> {
            match binding {
                DEFAULT_BINDING => Err(ResolveError::NotApn("Smtp".into())),
                "keyed" if !self.keyed_ok => Err(ResolveError::Credentials(
                    "apn_key /unreadable.p8: Permission denied (os error 13)".into(),
                )),
                "later" if self.later_ok => Ok(Arc::new(settings(domain))),
                _ => Err(ResolveError::UnknownDomain(domain.to_owned())),
            }
        }
    }

    /// A domain no binding can deliver now is refused for the first temporary reason of any binding (a binding's
    /// credentials that cannot be read: the sender retries while the operator fixes them), not for the default
    /// binding's permanent one; without a temporary reason, for the default binding's; and a binding that delivers
    /// it accepts it whatever the others say.
    #[test]
    fn a_domain_no_binding_delivers_is_refused_for_a_temporary_reason_first() {
        let check = |keyed_ok: bool, later_ok: bool| {
            let (_, engine) = engine();
            let intake = Intake::new(
                Arc::new(PerBinding { keyed_ok, later_ok }),
                Arc::new(NotDurable),
                engine,
                IdGenerator::new(1),
            );
            intake.check_domain("apps.example")
        };
        let refusal = check(false, false).unwrap_err();
        assert!(refusal.is_temporary(), "{refusal}");
        assert_eq!(
            refusal,
            DomainRefusal::NotPush {
                domain: "apps.example".into(),
                reason: ResolveError::Credentials(
                    "apn_key /unreadable.p8: Permission denied (os error 13)".into()
                ),
            }
        );
        assert_eq!(
            check(true, false),
            Err(DomainRefusal::NotPush {
                domain: "apps.example".into(),
                reason: ResolveError::NotApn("Smtp".into()),
            })
        );
        assert_eq!(check(false, true), Ok(()));
    }

    /// A resolver whose domain is configured but whose credentials cannot be read.
    struct UnreadableKey;

    impl SettingsResolver for UnreadableKey {
        fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            match domain {
                "keyed.example" => Err(ResolveError::Credentials(
                    "apn_key /etc/herald/key.p8: No such file or directory (os error 2)".into(),
                )),
                _ => Err(ResolveError::UnknownDomain(domain.to_owned())),
            }
        }
    }

    /// Credentials that cannot be read are herald's problem: a temporary refusal that names them, while an
    /// unknown domain stays a permanent one.
    #[test]
    fn unreadable_credentials_are_a_temporary_refusal() {
        let (_, engine) = engine();
        let intake = Intake::new(
            Arc::new(UnreadableKey),
            Arc::new(NotDurable),
            engine,
            IdGenerator::new(1),
        );
        let refusal = intake.check_domain("keyed.example").unwrap_err();
        assert!(refusal.is_temporary());
        assert!(
            !intake
                .check_domain("unknown.example")
                .unwrap_err()
                .is_temporary()
        );
        let submission = |domain: &str| Submission {
            domain: domain.into(),
            token: "ab".repeat(32),
            payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            ..Submission::default()
        };
        match intake.prepare(submission("keyed.example"), &source(&intake)) {
            Err(Refusal::Temporary(why)) => {
                assert!(why.is_misconfigured() && !why.is_full());
                assert!(
                    why.to_string().contains("apn_key /etc/herald/key.p8"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            intake.prepare(submission("unknown.example"), &source(&intake)),
            Err(Refusal::Permanent(_))
        ));
    }

    /// A spool whose writes wait for the test to let them finish, telling when one started.
    struct GatedDurable {
        started: tokio::sync::Notify,
        gate: tokio::sync::Notify,
    }

    impl Durable for GatedDurable {
        fn persist<'a>(
            &'a self,
            _batch: &'a [Notification],
        ) -> BoxFuture<'a, Result<(), SpoolError>> {
            Box::pin(async move {
                self.started.notify_one();
                self.gate.notified().await;
                Ok(())
            })
        }
    }

    /// Once the spool took a batch, the sender is told yes even when the engine cannot queue it now (here: the
    /// engine no longer routes the domain, as after a reload that removed it while the batch was written): a
    /// "try again" would have the sender send stored notifications a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_batch_is_acknowledged_even_when_the_engine_cannot_queue_it_now() {
        let (resolver, _) = engine();
        let unrouted = Arc::new(Engine::new(
            Arc::new(StaticResolver::default()),
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        let intake = Arc::new(Intake::new(
            resolver,
            Arc::new(NotDurable),
            unrouted.clone(),
            IdGenerator::new(1),
        ));
        let source = source(&intake);
        let batch: Vec<_> = (0..2)
            .map(|i| {
                let submission = Submission {
                    domain: "apps.example".into(),
                    token: format!("{i:02x}").repeat(32),
                    payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
                    ..Submission::default()
                };
                intake.prepare(submission, &source).unwrap()
            })
            .collect();
        assert!(intake.commit(batch, &source).await.is_ok());
        assert_eq!(unrouted.resident_room(), unrouted.max_resident());
    }

    /// A sender that goes away while its batch is being made durable (its request's future dropped) does not
    /// leave the batch in the spool unqueued until the next start: the commit finishes on its own task and queues it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_whose_caller_goes_away_still_queues_what_the_spool_took() {
        let (resolver, engine) = engine();
        engine.set_held(true);
        let spool = Arc::new(GatedDurable {
            started: tokio::sync::Notify::new(),
            gate: tokio::sync::Notify::new(),
        });
        let intake = Arc::new(Intake::new(
            resolver,
            spool.clone(),
            engine.clone(),
            IdGenerator::new(1),
        ));
        let submission = Submission {
            domain: "apps.example".into(),
            token: "ab".repeat(32),
            payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            ..Submission::default()
        };
        let source = source(&intake);
        let batch = vec![intake.prepare(submission, &source).unwrap()];
        {
            let commit = intake.commit(batch, &source);
            tokio::select! {
                _ = commit => panic!("the spool write was let through"),
                _ = spool.started.notified() => {}
            }
            // The caller gives up here: its future is dropped mid-write.
        }
        spool.gate.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let received = engine
                .stats("apps.example")
                .map_or(0, |s| s.received.load(std::sync::atomic::Ordering::Relaxed));
            if received == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the notification the spool took was never queued"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
