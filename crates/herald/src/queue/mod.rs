//! The queue: notifications accepted for delivery, by (binding, domain), from acceptance to their final outcome.
//!
//! [`Engine`] routes each notification to the task of its domain and binding ([`domain`]), creating the task with
//! the [`DeliverySettings`] of that (binding, domain) the first time: each has its own queue and connection pool.
//! Console commands and counters that name a domain cover every binding it is delivered from. A semaphore bounds the notifications held in memory, so a slow or dead
//! APNs makes submitters wait instead of growing memory without limit.
//!
//! The engine also counts the notifications it holds by domain ([`Residents`]), so that one domain whose deliveries
//! do not keep up cannot take the memory every other domain needs: while the engine holds at least half of its
//! maximum, a domain that would pass its (max-min fair) share of it is refused new work at the door
//! ([`Engine::over_share`]).
//!
//! A queue that has held nothing and had no connection for `idle_queue_timeout` lets its task and pool go
//! ([`EngineShared::retire`]); its counters stay, and its next notification starts a new task with them. Every
//! notification is handed to a queue's channel under the engine's lock, so a queue that retires under the same lock
//! with an empty channel cannot leave a notification behind. The counters of at most about
//! [`MAX_RETIRED_QUEUES`] retired queues are kept: beyond, the least recently used are forgotten
//! ([`EngineShared::make_room`]), and such a domain's counters start again from 0.
//!
//! A queue whose task panics goes on: the task hands what it held to a new task with the same counters
//! ([`domain::DomainTask::failed`]); what the panic took with it is told to the observer
//! ([`QueueObserver::abandoned`]).

pub mod domain;
pub mod stats;

/// The notification types and the retry schedule live in the leaf [`crate::model`]; these paths stay for callers.
pub use crate::model::{message, retry};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use herald_apns::token_hex::DeviceToken;
use tokio::sync::{Semaphore, mpsc};

use crate::logs::Logs;
use crate::outbound::settings::{DeliverySettings, OutsideValidity};
use crate::outcomes::OutcomeListener;
use domain::{DomainEvent, DomainSender, DomainTask, Epoch};
pub use domain::{MessageAction, QueueEntry};
use message::{DEFAULT_BINDING_GROUP, MessageId, Notification, Queued};
use stats::DomainStats;

/// A device token APNs said is no longer valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken {
    pub domain: Arc<str>,
    pub token: DeviceToken,
    pub reason: String,
    /// For HTTP/2 410 answers: when APNs found the token invalid (ms since the epoch).
    pub timestamp_ms: Option<u64>,
}

/// Where invalid tokens go.
pub trait InvalidTokenSink: Send + Sync + 'static {
    fn record(&self, token: InvalidToken);
}

/// Keeps invalid tokens in memory (tests, `herald bench`).
#[derive(Debug, Default)]
pub struct MemoryInvalidTokens(pub Mutex<Vec<InvalidToken>>);

impl InvalidTokenSink for MemoryInvalidTokens {
    fn record(&self, token: InvalidToken) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(token);
    }
}

/// Why a (binding, domain) has no delivery settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No configuration names the domain: no `domain` stanza on the binding's path names or matches it, and the
    /// outer scopes do not deliver every domain to APNs.
    #[error("no domain stanza for {0:?} in the configuration")]
    UnknownDomain(String),
    /// The domain is delivered to APNs only from other bindings (its `domain` stanzas are inside them), and the
    /// notification names none of them.
    #[error(
        "it is declared only for {}: name {} with the notification (REST \"binding\" field, MCMT X-Binding \
         header)",
        binding_list(.0),
        if .0.len() == 1 { "that binding" } else { "one of them" }
    )]
    OnlyInBindings(Vec<String>),
    /// The notification names a binding the configuration does not declare.
    #[error("binding {0:?} is not declared (declare it with binding \"{0}\" {{ … }})")]
    UnknownBinding(String),
    /// The domain is delivered by another method than APNs: the method's configuration word (`esmtp`, `smtp`, …),
    /// with `(the default)` when nothing sets it.
    #[error("delivery_method is {0}; herald delivers only with delivery_method = apn")]
    NotApn(String),
    #[error("no routes are configured")]
    NoRoutes,
    #[error("the binary protocol needs a client certificate (tls_certificate or tls_pkcs12)")]
    BinaryNeedsCertificate,
    /// The credentials the domain names cannot be used (the text names the option and the file).
    #[error("{0}")]
    Credentials(String),
    /// The client certificate the domain authenticates with is outside its validity dates now: APNs would refuse
    /// every connection made with it. Only the doors refuse with it ([`SettingsResolver::admit`]). Boxed: the
    /// file and dates would make every refusal carrying a `ResolveError` large.
    #[error(transparent)]
    Certificate(Box<OutsideValidity>),
}

impl From<OutsideValidity> for ResolveError {
    fn from(e: OutsideValidity) -> ResolveError {
        ResolveError::Certificate(Box::new(e))
    }
}

/// `binding "b1"`, or `bindings "b1", "b2"`: the bindings [`ResolveError::OnlyInBindings`] names.
pub(crate) fn binding_list(bindings: &[String]) -> String {
    let names: Vec<String> = bindings.iter().map(|b| format!("{b:?}")).collect();
    let word = if names.len() == 1 {
        "binding"
    } else {
        "bindings"
    };
    format!("{word} {}", names.join(", "))
}

/// Resolves the delivery settings of a (binding, domain) from the configuration.
pub trait SettingsResolver: Send + Sync + 'static {
    /// The settings of `domain` delivered from the `default` binding.
    fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError>;

    /// The settings of (binding, domain) when they are at hand without any work (built already, nothing to read
    /// or sign); `None` otherwise. Callers on async threads use it to keep [`resolve_binding`] off them.
    ///
    /// [`resolve_binding`]: SettingsResolver::resolve_binding
    fn cached(&self, _binding: &str, _domain: &str) -> Option<Arc<DeliverySettings>> {
        None
    }

    /// Drops what was kept to answer [`cached`](SettingsResolver::cached) for (binding, domain): its queue
    /// retired, and the settings are built again if it starts again.
    fn forget(&self, _binding: &str, _domain: &str) {}

    /// Whether new notifications may be accepted at `now` with `settings`, which [`cached`] or [`resolve_binding`]
    /// gave: refused when what the settings were built with no longer holds at `now` (the client certificate they
    /// authenticate with has expired since, or is not valid yet), however long ago they were built and kept. The
    /// doors ask it for every submission, so it reads nothing; the queues do not (notifications already accepted
    /// keep their handling). Accepts by default.
    ///
    /// [`cached`]: SettingsResolver::cached
    /// [`resolve_binding`]: SettingsResolver::resolve_binding
    fn admit(&self, _settings: &DeliverySettings, _now: SystemTime) -> Result<(), ResolveError> {
        Ok(())
    }

    /// [`cached`](SettingsResolver::cached) settings of (binding, domain) with their [`admit`] verdict at `now`:
    /// what a door asks for every submission, in one look where the resolver keeps both together.
    ///
    /// [`admit`]: SettingsResolver::admit
    fn cached_admitted(
        &self,
        binding: &str,
        domain: &str,
        now: SystemTime,
    ) -> Option<Result<Arc<DeliverySettings>, ResolveError>> {
        self.cached(binding, domain)
            .map(|s| self.admit(&s, now).map(|()| s))
    }

    /// Every binding notifications may name (`default` first).
    fn bindings(&self) -> Vec<String> {
        vec![message::DEFAULT_BINDING.to_owned()]
    }

    /// The settings of `domain` delivered from `binding`. Resolvers that know no bindings serve only `default`.
    fn resolve_binding(
        &self,
        binding: &str,
        domain: &str,
    ) -> Result<Arc<DeliverySettings>, ResolveError> {
        if binding == message::DEFAULT_BINDING {
            self.resolve(domain)
        } else {
            Err(ResolveError::UnknownBinding(binding.to_owned()))
        }
    }
}

/// Fixed settings per domain (tests, benchmarks, programs that build settings themselves).
#[derive(Default)]
pub struct StaticResolver(pub HashMap<String, Arc<DeliverySettings>>);

impl StaticResolver {
    pub fn with(mut self, settings: DeliverySettings) -> Self {
        self.0
            .insert(settings.domain.to_string(), Arc::new(settings));
        self
    }
}

impl SettingsResolver for StaticResolver {
    fn resolve(&self, domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
        self.0
            .get(domain)
            .cloned()
            .ok_or_else(|| ResolveError::UnknownDomain(domain.to_owned()))
    }

    fn cached(&self, binding: &str, domain: &str) -> Option<Arc<DeliverySettings>> {
        self.resolve_binding(binding, domain).ok()
    }

    /// The settings of `domain` when they were built for `binding`.
    fn resolve_binding(
        &self,
        binding: &str,
        domain: &str,
    ) -> Result<Arc<DeliverySettings>, ResolveError> {
        let settings = self.resolve(domain)?;
        if &*settings.binding == binding {
            Ok(settings)
        } else {
            Err(ResolveError::UnknownBinding(binding.to_owned()))
        }
    }
}

/// Why a notification was not queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("domain {domain:?} cannot deliver: {reason}")]
    Unroutable {
        domain: String,
        #[source]
        reason: ResolveError,
    },
    #[error("the queue is shutting down")]
    ShuttingDown,
}

/// Told about the life of each queued notification; the spool implements it to forget delivered and failed
/// notifications and to keep retry schedules across restarts.
pub trait QueueObserver: Send + Sync + 'static {
    /// Final outcomes (delivered or failed): the notifications leave the queue. A domain's queue reports the
    /// ones of each turn of its task together.
    fn finished(&self, ids: &[MessageId]);
    /// A transient failure: the next attempt is due at `next_attempt`, after `retries` retries.
    fn rescheduled(&self, id: MessageId, retries: u32, next_attempt: SystemTime);
    /// Asked before a transient failure waits `delay` here: true when the store took the notification back to
    /// deliver it again after the delay (the JetStream spool: by whichever node pulls it then), so that this node
    /// forgets it instead of holding it in memory.
    fn hand_back(&self, _id: MessageId, _retries: u32, _delay: std::time::Duration) -> bool {
        false
    }
    /// A queue now parks `delta` more notifications (fewer when negative): paused or without a route, it holds
    /// them without sending them. Returns how many of the node's parked notifications are above what the store
    /// lets it park (the JetStream spool: `spool_nats_max_held`), for the queue to hand back; 0 by default.
    fn parked(&self, _delta: i64) -> usize {
        0
    }
    /// Notifications this node no longer holds in any queue, their memory given back: the task of their queue
    /// failed with them in hand (a defect), or could not hand them to a new task (their domain is no longer
    /// configured, the engine is stopping). True when the store took them back to deliver them again after `hold`
    /// (the JetStream spool: by whichever node pulls them then); by default (the embedded spool) they stay stored
    /// as they are and are delivered again at the next start.
    fn abandoned(&self, _ids: &[MessageId], _hold: std::time::Duration) -> bool {
        false
    }
    /// Asked right before a notification is handed to a connection (its first attempt or a later one): true when
    /// this node no longer owns it, and the store forgot it without an outcome (the JetStream spool: its claim
    /// lapsed while the node was stopped or cut off from NATS, and JetStream gives it to another node). The queue
    /// then forgets it too, without sending it. Called for every notification sent: cheap. False by default (the
    /// embedded spool owns what it holds).
    fn lapsed(&self, _id: MessageId) -> bool {
        false
    }
}

/// Notifications that hold a memory permit, by domain (summed over the bindings it is delivered from), and in all.
/// A notification is counted when it takes its permit for its domain ([`Engine::hand_over`]) and uncounted where the
/// permit is given back ([`EngineShared::give_back`]): at its final outcome, when the store takes it back, when no
/// queue takes it, and when the task that held it failed with it. Beside them, the queues the engine keeps for each
/// domain (running, or retired for idleness and not yet forgotten): a domain the engine knows shares the memory even
/// while it holds nothing (its notifications are delivered as they come, or it sends now and then). A domain with
/// neither has no entry.
#[derive(Debug, Default)]
struct Residents {
    by_domain: HashMap<Arc<str>, Resident>,
    total: usize,
    /// Domains with at least one queue known: those the memory is shared among.
    sharing: usize,
}

/// One domain's entry in [`Residents`].
#[derive(Debug, Default, Clone, Copy)]
struct Resident {
    /// Notifications holding a permit.
    held: usize,
    /// Queues (one per binding) the engine keeps for the domain.
    queues: usize,
}

impl Residents {
    fn add(&mut self, domain: &Arc<str>, n: usize) {
        match self.by_domain.get_mut(&**domain) {
            Some(r) => r.held += n,
            None => {
                self.by_domain
                    .insert(domain.clone(), Resident { held: n, queues: 0 });
            }
        }
        self.total += n;
    }

    /// Uncounts `n` of `domain`; never below 0 (what was not counted is not uncounted).
    fn remove(&mut self, domain: &str, n: usize) {
        let Some(r) = self.by_domain.get_mut(domain) else {
            return;
        };
        let n = n.min(r.held);
        r.held -= n;
        self.total -= n;
        if r.held == 0 && r.queues == 0 {
            self.by_domain.remove(domain);
        }
    }

    /// The engine made (`true`) or forgot (`false`) a queue of `domain`.
    fn known(&mut self, domain: &Arc<str>, made: bool) {
        if made {
            let r = self.by_domain.entry(domain.clone()).or_default();
            r.queues += 1;
            if r.queues == 1 {
                self.sharing += 1;
            }
        } else if let Some(r) = self.by_domain.get_mut(&**domain) {
            if r.queues == 0 {
                return;
            }
            r.queues -= 1;
            if r.queues == 0 {
                self.sharing -= 1;
                if r.held == 0 {
                    self.by_domain.remove(&**domain);
                }
            }
        }
    }

    /// Notifications `domain` holds.
    fn held(&self, domain: &str) -> usize {
        self.by_domain.get(domain).map_or(0, |r| r.held)
    }

    /// What each domain but `domain` needs: what it holds, or `reserve` if more while the engine knows a queue of it.
    fn needs_of_others<'a>(
        &'a self,
        domain: &'a str,
        reserve: usize,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        self.by_domain
            .iter()
            .filter(move |(d, _)| &***d != domain)
            .map(move |(_, r)| {
                let need = if r.queues > 0 {
                    r.held.max(reserve)
                } else {
                    r.held
                };
                (r.held, need)
            })
    }

    /// What the other domains hold and need (see [`Residents::needs_of_others`]), copied out so that the share is
    /// worked out without holding the lock every notification takes.
    fn others(&self, domain: &str, reserve: usize) -> Others {
        let mut others = Others {
            held: 0,
            unused_reserves: 0,
            needs: Vec::with_capacity(self.by_domain.len()),
        };
        for (h, need) in self.needs_of_others(domain, reserve) {
            others.held += h;
            others.unused_reserves += need - h;
            others.needs.push(need);
        }
        others
    }
}

/// The other domains' part in one domain's share ([`Engine::over_share`]).
struct Others {
    /// What they hold.
    held: usize,
    /// The part of their reserves they do not hold yet.
    unused_reserves: usize,
    /// What each needs: what it holds, or its reserve if more.
    needs: Vec<usize>,
}

impl Others {
    /// Whether a domain may reach `level`: with the others' needs each capped at `level` the total stays within
    /// `max` (max-min fairness), and what the others hold and their unused reserves still fit beside it.
    fn allow(&self, level: usize, max: usize) -> bool {
        let capped: usize = self.needs.iter().map(|&n| n.min(level)).sum();
        level.saturating_add(capped) <= max && level <= self.room(max)
    }

    /// What the others hold and the reserves they do not use yet leave of `max`.
    fn room(&self, max: usize) -> usize {
        max.saturating_sub(self.held + self.unused_reserves)
    }

    /// The most a domain may hold: the largest level [`Others::allow`] allows. With the needs in order, the largest
    /// L with `L + sum(min(need, L)) <= max` lies between two of them, where it is (max - the needs below) / (1 + the
    /// number at or above): the largest such L of the segments it falls in.
    fn share(mut self, max: usize) -> usize {
        self.needs.sort_unstable();
        let count = self.needs.len();
        let mut below = 0usize;
        let mut fair = 0usize;
        for j in 0..=count {
            let level = max.saturating_sub(below) / (1 + count - j);
            let lower = if j == 0 { 0 } else { self.needs[j - 1] };
            if level >= lower && (j == count || level <= self.needs[j]) {
                fair = fair.max(level);
            }
            if j < count {
                below = below.saturating_add(self.needs[j]);
            }
        }
        fair.min(self.room(max))
    }
}

/// A domain holding more than its share of the engine's memory while the engine holds at least half of it
/// ([`Engine::over_share`]): new notifications of that domain are refused until it holds less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverShare {
    pub domain: String,
    /// Notifications the domain holds in memory now.
    pub held: usize,
    /// Notifications of the domain the refused request or message carried.
    pub wanted: usize,
    /// The most it may hold now ([`Engine::over_share`]).
    pub share: usize,
    /// `max_resident_notifications`.
    pub max: usize,
    /// Domains the memory is shared among now (the engine keeps a queue of them), this one included.
    pub holding: usize,
}

/// The memory permit of a notification on its way to its queue, taken and counted for its domain
/// ([`EngineShared::took`]). The queue keeps it once the notification is sent to it ([`Taken::handed`]); dropped
/// before that (the hand-off failed, or the future handing the notification over was dropped at an await), it gives
/// the permit back and tells the outcome listener that the notification left (it is not queued here).
struct Taken<'a> {
    shared: &'a EngineShared,
    domain: &'a Arc<str>,
    /// The notification the permit is for (`None`: an event that carries none, whose permit is given back all
    /// the same).
    id: Option<MessageId>,
    handed: bool,
}

impl Taken<'_> {
    /// The queue took the notification, and its permit with it.
    fn handed(mut self) {
        self.handed = true;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.handed {
            return;
        }
        self.shared.give_back(self.domain, 1);
        if let (Some(l), Some(id)) = (self.shared.listener.get(), self.id) {
            if std::thread::panicking() {
                // Dropped while a panic unwinds (the listener's `queued` or the settings' resolution failed): a
                // second panic here would abort the process, so one of the listener is caught and dropped.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.left(id)));
            } else {
                l.left(id);
            }
        }
    }
}

/// What every domain task shares.
pub struct EngineShared {
    pub logs: Logs,
    invalid: Arc<dyn InvalidTokenSink>,
    resident: Arc<Semaphore>,
    /// The notifications holding a permit of `resident`, by domain. A lock of its own, held for a map operation at
    /// a time (never with the lock of `queues`).
    residents: Mutex<Residents>,
    observer: OnceLock<Arc<dyn QueueObserver>>,
    /// Told about every notification's states and outcomes (status lookups, webhooks, dashboards).
    listener: OnceLock<Arc<dyn OutcomeListener>>,
    /// Delivery is held (`apn { enabled = false }`): notifications are accepted and queued, not sent.
    held: std::sync::atomic::AtomicBool,
    resolver: Arc<dyn SettingsResolver>,
    /// One queue per (domain, binding); a retired queue keeps its counters here.
    queues: Mutex<HashMap<QueueKey, DomainHandle>>,
    /// How long a queue rests with nothing queued before it retires (`None`: never).
    idle_queue_timeout: Option<std::time::Duration>,
    /// Bumped by [`Engine::reconfigure`] as it lists the queues (under the lock of `queues`): a queue started with
    /// settings resolved before a reload, and inserted after the reload listed the queues, sees the count changed
    /// and resolves its settings again.
    reconfigurations: std::sync::atomic::AtomicU64,
    /// `queues` is looked over for retired queues to forget once it holds this many (see
    /// [`EngineShared::make_room`]); changed under its lock.
    look_over_at: std::sync::atomic::AtomicUsize,
    /// Counts the uses of queues, to order them by their last ([`DomainHandle::last_used`]).
    uses: std::sync::atomic::AtomicU64,
    /// By domain, the counters of its queues that were forgotten while another queue of the domain stayed (see
    /// [`EngineShared::make_room`]), so that the domain's counters, the sum over its queues, never go down. Kept as
    /// long as a queue of the domain is: at most one per domain in `queues`. Locked only under the lock of `queues`.
    carried: Mutex<HashMap<Arc<str>, Arc<DomainStats>>>,
}

impl EngineShared {
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn invalid_token(&self, token: InvalidToken) {
        self.invalid.record(token);
    }

    /// A notification of `domain` reached its final outcome: it no longer takes memory.
    pub(crate) fn release(&self, domain: &str) {
        self.give_back(domain, 1);
    }

    /// A notification of `domain` took its memory permit: counted for its domain until [`EngineShared::give_back`].
    fn took(&self, domain: &Arc<str>) {
        self.residents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(domain, 1);
    }

    /// `n` notifications of `domain` give their memory permits back: every permit a notification took comes back
    /// here, so that the count by domain follows the permits.
    fn give_back(&self, domain: &str, n: usize) {
        self.residents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain, n);
        self.resident.add_permits(n.min(Semaphore::MAX_PERMITS));
    }

    /// A memory permit taken for a notification of `domain` outside [`Engine::hand_over`] (tests that hand a task
    /// its notifications themselves), counted as the engine counts it.
    #[cfg(test)]
    pub(crate) fn take_permit(&self, domain: &str) {
        self.resident
            .try_acquire()
            .expect("room for the test's notification")
            .forget();
        self.took(&Arc::from(domain));
    }

    /// Notifications reached their final outcome: the observer forgets them.
    pub(crate) fn finished(&self, ids: &[MessageId]) {
        if let Some(o) = self.observer.get() {
            o.finished(ids);
        }
    }

    /// True when the store took `item` back for a retry after `delay` (see [`QueueObserver::hand_back`]): it no
    /// longer takes memory here. The caller forgets it, then tells the outcome listener ([`EngineShared::left`]).
    pub(crate) fn handed_back(&self, item: &Queued, delay: std::time::Duration) -> bool {
        let taken = self
            .observer
            .get()
            .is_some_and(|o| o.hand_back(item.notification.id, item.retries, delay));
        if taken {
            self.give_back(&item.notification.domain, 1);
        }
        taken
    }

    /// True when this node no longer owns `item` ([`QueueObserver::lapsed`]): the store forgot it, and its memory is
    /// given back here. The caller forgets it, then tells the outcome listener ([`EngineShared::left`]).
    pub(crate) fn lapsed(&self, item: &Queued) -> bool {
        let lapsed = self
            .observer
            .get()
            .is_some_and(|o| o.lapsed(item.notification.id));
        if lapsed {
            self.give_back(&item.notification.domain, 1);
        }
        lapsed
    }

    /// Tells the outcome listener that notification `id` left this node (the store took it back).
    pub(crate) fn left(&self, id: MessageId) {
        if let Some(l) = self.listener.get() {
            l.left(id);
        }
    }

    /// Notifications no queue holds any more, their memory given back (see [`QueueObserver::abandoned`]): true
    /// when the store took them back, and the outcome listener hears that they left.
    pub(crate) fn abandoned(&self, ids: &[MessageId], hold: std::time::Duration) -> bool {
        let taken = self.observer.get().is_some_and(|o| o.abandoned(ids, hold));
        if taken {
            ids.iter().for_each(|id| self.left(*id));
        }
        taken
    }

    /// See [`QueueObserver::parked`].
    pub(crate) fn parked(&self, delta: i64) -> usize {
        match self.observer.get() {
            Some(o) if delta != 0 => o.parked(delta),
            _ => 0,
        }
    }

    pub(crate) fn rescheduled(&self, item: &Queued, delay: std::time::Duration) {
        let next = SystemTime::now() + delay;
        if let Some(o) = self.observer.get() {
            o.rescheduled(item.notification.id, item.retries, next);
        }
        if let Some(l) = self.listener.get() {
            l.rescheduled(item.notification.id, item.retries, next);
        }
    }

    /// The outcome listener, when one is set.
    pub(crate) fn listener(&self) -> Option<&Arc<dyn OutcomeListener>> {
        self.listener.get()
    }

    /// How long a queue may rest with nothing queued before it retires (`idle_queue_timeout`; `None`: never).
    pub(crate) fn idle_queue_timeout(&self) -> Option<std::time::Duration> {
        self.idle_queue_timeout
    }

    /// Hands `event`, which carries a notification and its memory permit, to the queue of (`binding`, `domain`),
    /// starting the queue if no task runs for it (a new notification counts as received). When it cannot, the
    /// permit is given back and the outcome listener hears that the notification left (it is not queued here).
    ///
    /// Cancel safety: dropped at its await (a first notification's settings being resolved), the notification is
    /// not queued, and it is as if the hand-off failed: the permit is given back and the outcome listener hears
    /// that the notification left.
    async fn hand_event(
        self: &Arc<Self>,
        binding: &Arc<str>,
        domain: &Arc<str>,
        event: DomainEvent,
        arrival: Arrival,
    ) -> Result<(), SubmitError> {
        let taken = Taken {
            shared: self,
            domain,
            id: event.notification_id(),
            handed: false,
        };
        self.hand_taken(taken, binding, event, arrival).await
    }

    /// [`EngineShared::hand_event`] with the notification's permit in `taken`: kept by the queue once the event is
    /// sent to it, given back when `taken` is dropped before (the hand-off failed, or this future was dropped).
    async fn hand_taken(
        self: &Arc<Self>,
        taken: Taken<'_>,
        binding: &Arc<str>,
        event: DomainEvent,
        arrival: Arrival,
    ) -> Result<(), SubmitError> {
        let key = QueueKey {
            domain: taken.domain.clone(),
            binding: binding.clone(),
        };
        let sent = match self.send_to_queue(&key, event, arrival) {
            Handed::Sent => Ok(()),
            Handed::NoQueue(event) => self.start_queue(key, event, arrival).await,
        };
        if sent.is_ok() {
            taken.handed();
        }
        sent
    }

    /// Sends `event` to the running queue of `key` (counting the notification it carries when it is new), under the
    /// engine-wide lock: a queue retires under the same lock, so it cannot retire between this look and the send.
    /// A queue whose task is gone without retiring (it could not go on) is forgotten here: the event comes back, for
    /// a new task with the same counters.
    fn send_to_queue(&self, key: &QueueKey, event: DomainEvent, arrival: Arrival) -> Handed {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(handle) = queues.get_mut(key) else {
            return Handed::NoQueue(event);
        };
        let Some(sender) = &handle.sender else {
            return Handed::NoQueue(event);
        };
        // Counted before the send, so that the counters never show an outcome before its reception.
        if arrival == Arrival::New {
            handle
                .stats
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match sender.0.send(event) {
            Ok(()) => Handed::Sent,
            Err(mpsc::error::SendError(event)) => {
                if arrival == Arrival::New {
                    // Counted again when the new task takes it.
                    handle
                        .stats
                        .received
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Its task ended without retiring (a task that panics hands its queue over itself, so this is a
                // task the runtime dropped, or a defect).
                tracing::error!(
                    domain = %key.domain, binding = %key.binding,
                    "the queue's task is gone; a new task starts"
                );
                handle.sender = None;
                handle
                    .stats
                    .task_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Handed::NoQueue(event)
            }
        }
    }

    /// Starts the queue of `key` and sends it `event` (or sends it to the queue another submitter started
    /// meanwhile). The engine-wide lock is held only to look the queue up and to insert it: a first
    /// notification's settings (which may read credential files, parse a PKCS#12 identity and sign a provider
    /// token) are resolved outside it, on a blocking thread, so other submitters and the async threads do not
    /// wait for them. A retired queue starts again with its counters.
    ///
    /// A boxed future: the task it starts may fail and hand its notifications over with [`EngineShared::hand_event`],
    /// which comes here ([`domain::DomainTask::failed`]).
    fn start_queue(
        self: &Arc<Self>,
        key: QueueKey,
        event: DomainEvent,
        arrival: Arrival,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SubmitError>> + Send + '_>> {
        Box::pin(self.start_queue_now(key, event, arrival))
    }

    /// [`EngineShared::start_queue`]'s work.
    async fn start_queue_now(
        self: &Arc<Self>,
        key: QueueKey,
        event: DomainEvent,
        arrival: Arrival,
    ) -> Result<(), SubmitError> {
        let seen = self
            .reconfigurations
            .load(std::sync::atomic::Ordering::Acquire);
        let (binding, domain) = (key.binding.clone(), key.domain.clone());
        let settings = resolve_blocking(
            self.resolver.clone(),
            key.binding.clone(),
            key.domain.clone(),
        )
        .await?
        .map_err(|reason| SubmitError::Unroutable {
            domain: key.domain.to_string(),
            reason,
        })?;
        let (sender, stale) = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let handle = self.handle_of(&mut queues, key);
            if arrival == Arrival::New {
                handle
                    .stats
                    .received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Another submitter may have started the queue meanwhile: it takes the event. Sent under the engine's
            // lock, as `send_to_queue` does, so that the queue cannot retire in between (it retires only with its
            // channel empty, looked at under this lock); a task gone without retiring is replaced here.
            let mut event = Some(event);
            if let Some(sender) = &handle.sender
                && let Some(e) = event.take()
                && let Err(mpsc::error::SendError(e)) = sender.0.send(e)
            {
                tracing::error!(
                    domain = %settings.domain, binding = %settings.binding,
                    "the queue's task is gone; a new task starts"
                );
                handle
                    .stats
                    .task_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                handle.sender = None;
                event = Some(e);
            }
            let sender = match (event, &handle.sender) {
                (None, Some(sender)) => sender.clone(),
                (event, _) => {
                    tracing::debug!(
                        domain = %settings.domain, binding = %settings.binding,
                        binding_group = %settings.binding_group, endpoint = %settings.endpoint,
                        bind_address = ?settings.endpoint.bind, max_connections = settings.max_connections,
                        "queue started"
                    );
                    let (tx, rx) = mpsc::unbounded_channel();
                    let sender = DomainSender(tx);
                    handle
                        .stats
                        .resting
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    let task = DomainTask::new(
                        settings,
                        seen,
                        sender.clone(),
                        rx,
                        self.clone(),
                        handle.stats.clone(),
                    );
                    if let Some(event) = event {
                        // The task's receiver is alive: it is in `task`.
                        let _ = sender.0.send(event);
                    }
                    tokio::spawn(task.run());
                    handle.sender = Some(sender.clone());
                    sender
                }
            };
            let stale = self
                .reconfigurations
                .load(std::sync::atomic::Ordering::Acquire)
                != seen;
            (sender, stale)
        };
        if stale {
            // A reload listed the queues while these settings were resolved from the configuration before it.
            // On a task of its own, so that the queue hears the verdict even if this submitter goes away.
            let shared = self.clone();
            tokio::spawn(async move {
                let epoch = shared
                    .reconfigurations
                    .load(std::sync::atomic::Ordering::Acquire);
                match resolve_blocking(shared.resolver.clone(), binding, domain).await {
                    Ok(Ok(settings)) => {
                        let _ = sender.0.send(DomainEvent::Reconfigure { settings, epoch });
                    }
                    Ok(Err(e)) => {
                        let _ = sender.0.send(DomainEvent::Unroutable {
                            reason: e.to_string(),
                            epoch,
                        });
                    }
                    Err(_) => {}
                }
            });
        }
        Ok(())
    }

    /// The task of (`binding`, `domain`) whose channel `sender` is failed ([`domain::DomainTask::failed`]): the
    /// engine forgets it, so that the queue's next notification starts a new task with the same counters. Returns
    /// how many times the queue's task has failed.
    pub(crate) fn queue_failed(
        &self,
        binding: &Arc<str>,
        domain: &Arc<str>,
        sender: &DomainSender,
    ) -> u64 {
        let key = QueueKey {
            domain: domain.clone(),
            binding: binding.clone(),
        };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(handle) = queues.get_mut(&key) else {
            return 1;
        };
        if handle
            .sender
            .as_ref()
            .is_some_and(|s| s.0.same_channel(&sender.0))
        {
            handle.sender = None;
        }
        handle
            .stats
            .task_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// The engine made (`true`) or forgot (`false`) a queue of `domain`: counted for the share of memory
    /// ([`Residents::known`]). Called under the lock of `queues`, where the queue's handle is made or forgotten.
    fn queue_known(&self, domain: &Arc<str>, made: bool) {
        self.residents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .known(domain, made);
    }

    /// `n` notifications of `domain` no longer take memory (see [`EngineShared::release`]).
    pub(crate) fn release_many(&self, domain: &str, n: usize) {
        self.give_back(domain, n);
    }

    /// The handle of `key` in `queues` (the engine's map, locked), made with new counters if there is none, and
    /// marked used now.
    fn handle_of<'a>(
        &self,
        queues: &'a mut HashMap<QueueKey, DomainHandle>,
        key: QueueKey,
    ) -> &'a mut DomainHandle {
        if !queues.contains_key(&key) {
            self.make_room(queues);
            self.queue_known(&key.domain, true);
        }
        let handle = queues.entry(key).or_insert_with(DomainHandle::new);
        handle.last_used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handle
    }

    /// Keeps the engine's map from growing with every domain ever seen (a regex `domain` stanza, or a global
    /// `delivery_method = apn`, makes a queue for any recipient domain): beyond [`MAX_RETIRED_QUEUES`] retired
    /// queues (and domains counted without a queue here), the least recently used are forgotten, counters and all;
    /// their next notification starts them with new counters, from 0. Running queues and paused ones (an operator's
    /// mark) are kept. The map is looked over only once it has grown by an eighth since the last look, so that this
    /// costs O(1) per new queue, amortized.
    ///
    /// A domain's counters are the sum over its queues (one per binding, [`Engine::all_stats`]): a queue forgotten
    /// while another queue of its domain stays leaves its counters to the domain's carry-over
    /// ([`EngineShared::carried`]), so that the domain's counters do not go down (a metrics reader would take the
    /// drop for a restart); once no queue of a domain is left, its carry-over goes too and the domain is unknown.
    fn make_room(&self, queues: &mut HashMap<QueueKey, DomainHandle>) {
        use std::sync::atomic::Ordering::Relaxed;
        if queues.len() < self.look_over_at.load(Relaxed) {
            return;
        }
        let mut retired: Vec<(u64, QueueKey)> = queues
            .iter()
            .filter(|(_, h)| h.sender.is_none() && !h.stats.paused.load(Relaxed))
            .map(|(k, h)| (h.last_used, k.clone()))
            .collect();
        if retired.len() >= MAX_RETIRED_QUEUES {
            // Room for the one about to be made.
            let excess = retired.len() + 1 - MAX_RETIRED_QUEUES;
            retired.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
            let forgotten: Vec<(Arc<str>, Arc<DomainStats>)> = retired[..excess]
                .iter()
                .filter_map(|(_, key)| Some((key.domain.clone(), queues.remove(key)?.stats)))
                .collect();
            let kept: std::collections::HashSet<&Arc<str>> =
                queues.keys().map(|k| &k.domain).collect();
            let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
            for (domain, _) in &forgotten {
                self.queue_known(domain, false);
            }
            for (domain, stats) in forgotten {
                if kept.contains(&domain) {
                    carried
                        .entry(domain)
                        .or_insert_with(|| Arc::new(DomainStats::carry_over()))
                        .add_counters(&stats);
                }
            }
            carried.retain(|domain, _| kept.contains(domain));
            tracing::debug!(
                forgotten = excess,
                "retired queues forgotten: more than {MAX_RETIRED_QUEUES} kept"
            );
        }
        let next = queues.len() + (queues.len() / 8).max(MAX_RETIRED_QUEUES / 8);
        self.look_over_at.store(next, Relaxed);
    }

    /// Retires the queue of (`binding`, `domain`) whose task holds `events`: true when it is no longer reachable
    /// (the task may end), false when notifications or commands wait in its channel (it goes on). Notifications
    /// are handed over under the same lock ([`Engine::hand_over`]), so none can arrive once this returns true.
    pub(crate) fn retire(
        &self,
        binding: &Arc<str>,
        domain: &Arc<str>,
        events: &mpsc::UnboundedReceiver<DomainEvent>,
    ) -> bool {
        let key = QueueKey {
            domain: domain.clone(),
            binding: binding.clone(),
        };
        {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            if !events.is_empty() {
                return false;
            }
            if let Some(handle) = queues.get_mut(&key) {
                handle.sender = None;
                handle.last_used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                handle
                    .stats
                    .retired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.resolver.forget(binding, domain);
        tracing::debug!(%domain, %binding, "idle queue retired");
        true
    }
}

/// A queue in the engine's map: its channel while its task runs, and its counters, which outlive the task.
/// How a notification comes to a queue: newly accepted (it counts as received), or again from the spool — at
/// start, or pulled from the shared stream, where the node that accepted it counted it ([`Engine::count_received`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    New,
    Restored,
}

struct DomainHandle {
    /// `None` once the queue retired (see [`EngineShared::retire`]).
    sender: Option<DomainSender>,
    stats: Arc<DomainStats>,
    /// When the queue was last made, retired, or counted without a task (a count of such events, see
    /// [`EngineShared::uses`]): which retired queues are forgotten first ([`EngineShared::make_room`]).
    last_used: u64,
}

impl DomainHandle {
    fn new() -> Self {
        DomainHandle {
            sender: None,
            stats: Arc::new(DomainStats::default()),
            last_used: 0,
        }
    }
}

/// Retired queues (and domains counted without a queue here) whose counters the engine keeps: beyond it (looked at
/// each time the engine's map has grown by an eighth) the least recently used are forgotten, their counters with
/// them ([`EngineShared::make_room`]).
pub const MAX_RETIRED_QUEUES: usize = 10_000;

/// What a queue and its pool serve: one domain delivered from one binding
/// (docs/momentum-compat.md#outbound-connections: connections are limited "on a domain/binding level").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct QueueKey {
    domain: Arc<str>,
    binding: Arc<str>,
}

/// Limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Most notifications held in memory at once.
    pub max_resident: usize,
    /// How long a queue with nothing queued and no connection keeps its task and pool (`None`: for good).
    pub idle_queue_timeout: Option<std::time::Duration>,
    /// The global `message_expiration`: how long a notification pulled from the shared stream whose domain no
    /// queue here can deliver goes back to the stream before it fails ([`Engine::fail_unqueued`]); its domain's
    /// own value is not known here.
    pub message_expiration: std::time::Duration,
}

/// Default `idle_queue_timeout`.
pub const DEFAULT_IDLE_QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Default `max_resident_notifications`.
pub const DEFAULT_MAX_RESIDENT: usize = 1_000_000;

impl EngineLimits {
    /// The limits `config` sets (`max_resident_notifications`, `idle_queue_timeout`).
    pub fn from_config(config: &herald_conf::Config) -> Self {
        let global = herald_conf::ScopePath::global();
        let max_resident = config
            .eval_opt(&global, herald_conf::Opt::MaxResidentNotifications)
            .ok()
            .and_then(|v| v.as_int())
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_RESIDENT);
        let idle_queue_timeout = config
            .eval_opt(&global, herald_conf::Opt::IdleQueueTimeout)
            .ok()
            .and_then(|v| v.as_int())
            .and_then(|n| u64::try_from(n).ok())
            .map_or(Some(DEFAULT_IDLE_QUEUE_TIMEOUT), |secs| {
                (secs > 0).then_some(std::time::Duration::from_secs(secs))
            });
        let message_expiration = config
            .eval_opt(&global, herald_conf::Opt::MessageExpiration)
            .ok()
            .and_then(|v| v.as_int())
            .and_then(|n| u64::try_from(n).ok())
            .map_or(
                retry::RetryPolicy::default().message_expiration,
                std::time::Duration::from_secs,
            );
        EngineLimits {
            max_resident,
            idle_queue_timeout,
            message_expiration,
        }
    }
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_resident: DEFAULT_MAX_RESIDENT,
            idle_queue_timeout: Some(DEFAULT_IDLE_QUEUE_TIMEOUT),
            message_expiration: retry::RetryPolicy::default().message_expiration,
        }
    }
}

/// Memory taken ahead for a batch ([`Engine::try_reserve`]); what is not used is given back when it is dropped.
#[derive(Debug)]
pub struct Reservation(Option<tokio::sync::OwnedSemaphorePermit>);

impl Reservation {
    /// Notifications this reservation still holds room for.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Whether it holds room for none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `more`'s room to this one.
    pub fn merge(&mut self, more: Reservation) {
        match (&mut self.0, more.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// The delivery engine: per-domain queues and pools.
pub struct Engine {
    max_resident: usize,
    /// See [`EngineLimits::message_expiration`].
    message_expiration: std::time::Duration,
    shared: Arc<EngineShared>,
}

/// What [`EngineShared::send_to_queue`] did with an event.
enum Handed {
    /// Sent to the queue's task.
    Sent,
    /// No task runs for the queue: the event comes back.
    NoQueue(DomainEvent),
}

impl Engine {
    pub fn new(
        resolver: Arc<dyn SettingsResolver>,
        logs: Logs,
        invalid: Arc<dyn InvalidTokenSink>,
        limits: EngineLimits,
    ) -> Self {
        let resident = Arc::new(Semaphore::new(
            limits.max_resident.min(Semaphore::MAX_PERMITS),
        ));
        Engine {
            max_resident: limits.max_resident,
            message_expiration: limits.message_expiration,
            shared: Arc::new(EngineShared {
                logs,
                invalid,
                resident,
                residents: Mutex::new(Residents::default()),
                observer: OnceLock::new(),
                listener: OnceLock::new(),
                held: std::sync::atomic::AtomicBool::new(false),
                resolver,
                queues: Mutex::new(HashMap::new()),
                idle_queue_timeout: limits.idle_queue_timeout,
                reconfigurations: std::sync::atomic::AtomicU64::new(0),
                look_over_at: std::sync::atomic::AtomicUsize::new(MAX_RETIRED_QUEUES),
                carried: Mutex::new(HashMap::new()),
                uses: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn logs(&self) -> &Logs {
        &self.shared.logs
    }

    /// Holds delivery (true) or lets it go on (false): held notifications stay queued, nothing is sent. The apn
    /// module's `enabled = false` holds delivery, and so does a stop. As with a pause, what is on the wire is
    /// answered, and what the connections had not taken yet goes back to its queue (the pools open no connection
    /// for it while held): every running queue is woken to act on the change at once, not at its next look.
    pub fn set_held(&self, held: bool) {
        let was = self
            .shared
            .held
            .swap(held, std::sync::atomic::Ordering::Relaxed);
        if was == held {
            return;
        }
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        for sender in domains.values().filter_map(|h| h.sender.as_ref()) {
            let _ = sender.0.send(DomainEvent::Wake);
        }
    }

    /// Whether delivery is held (see [`Engine::set_held`]).
    pub fn is_held(&self) -> bool {
        self.shared.is_held()
    }

    /// Sets the observer of every notification's life (once, before traffic); false if one was set already.
    pub fn set_observer(&self, observer: Arc<dyn QueueObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    /// Sets the listener told about every notification's states and outcomes (once, before traffic); false if one
    /// was set already. Combine several with [`crate::outcomes::Fanout`].
    pub fn set_outcome_listener(&self, listener: Arc<dyn OutcomeListener>) -> bool {
        self.shared.listener.set(listener).is_ok()
    }

    /// Counts `notification` as received without queueing it here: it was accepted into a spool other nodes
    /// deliver from (the JetStream spool), and whichever node pulls it does not count it again.
    pub fn count_received(&self, notification: &Notification) {
        let key = QueueKey {
            domain: notification.domain.clone(),
            binding: notification.binding.clone(),
        };
        let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        self.shared
            .handle_of(&mut queues, key)
            .stats
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tells the outcome listener that `notification` was accepted into a spool other nodes deliver from (the
    /// JetStream spool): it waits there for whichever node pulls it.
    pub fn entered_stream(&self, notification: &Notification) {
        if let Some(l) = self.shared.listener.get() {
            l.entered_stream(notification);
        }
    }

    /// Queues a notification recovered from the spool with its retry count and next attempt time. It does not
    /// count as received again (the start that accepted it, or the node that did, counted it).
    ///
    /// Cancel safety: as [`Engine::submit`]'s. Dropped before it returns, the notification is not queued here (it
    /// stays in the spool as it was) and the engine's memory and counts are as they were.
    pub async fn restore(
        &self,
        notification: Notification,
        retries: u32,
        next_attempt: Option<SystemTime>,
    ) -> Result<(), SubmitError> {
        let mut item = Queued::new(notification);
        item.retries = retries;
        let delay = next_attempt.and_then(|t| t.duration_since(SystemTime::now()).ok());
        self.enqueue(item, delay.filter(|d| !d.is_zero()), Arrival::Restored)
            .await
    }

    /// Queues a notification for delivery; waits while the engine holds its maximum in memory.
    /// Must run inside a tokio runtime (a domain's first notification starts its task).
    ///
    /// Cancel safety: the notification is queued only when this returns `Ok`; it may be dropped at any await (a
    /// timeout, a `select!`, a client gone) and then the notification is not queued and nothing it took is kept.
    /// It awaits the memory permit (taking none until it is granted) and, for a queue with no task running, the
    /// queue's settings; dropped there, the permit is given back, the notification is uncounted from its domain,
    /// and the outcome listener, told it was queued, hears that it left.
    pub async fn submit(&self, notification: Notification) -> Result<(), SubmitError> {
        self.enqueue(Queued::new(notification), None, Arrival::New)
            .await
    }

    /// Takes a memory permit (waiting for one), then hands `item` to its domain's task, due now or after
    /// `delay`. The permit comes back when the notification reaches its final outcome, or here on failure or
    /// when this future is dropped before the hand-off (see [`Engine::submit`]).
    async fn enqueue(
        &self,
        item: Box<Queued>,
        delay: Option<std::time::Duration>,
        arrival: Arrival,
    ) -> Result<(), SubmitError> {
        let permit = self
            .shared
            .resident
            .acquire()
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        // The notification's from here: `hand_over` counts it, and guards it before its first await.
        permit.forget();
        self.hand_over(item, delay, arrival).await
    }

    /// Room for `n` more notifications in memory, taken now, or `None` when the engine cannot hold them
    /// (back-pressure: the caller refuses the work instead of waiting with it in memory).
    pub fn try_reserve(&self, n: usize) -> Option<Reservation> {
        if n == 0 {
            return Some(Reservation(None));
        }
        let n = u32::try_from(n).ok()?;
        self.shared
            .resident
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| Reservation(Some(p)))
    }

    /// Notifications the engine can still take in memory.
    pub fn resident_room(&self) -> usize {
        self.shared.resident.available_permits()
    }

    /// The most notifications the engine holds in memory (`max_resident_notifications`).
    pub fn max_resident(&self) -> usize {
        self.max_resident
    }

    /// Notifications of `domain` (from every binding) the engine holds in memory now: queued, delayed, in flight,
    /// or on their way to its queue.
    pub fn resident_in(&self, domain: &str) -> usize {
        let residents = self
            .shared
            .residents
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        residents.held(domain)
    }

    /// The first of `domains` (each with the notifications of it a batch carries) that would hold more than its
    /// share of memory with them, if the engine is under pressure. While the engine with the batch would hold less
    /// than half of `max_resident_notifications` (M), or while it knows fewer than two domains, `None`: the global
    /// limit alone applies (a deployment serving one app fills M as before).
    ///
    /// Under pressure the memory is shared max-min fairly among the k domains the engine keeps a queue of (running,
    /// or retired for idleness and not forgotten): each needs what it holds, and one holding little or nothing (its
    /// notifications delivered as they come, or sent now and then) still needs a reserve of M / 2k (at least 1) for
    /// its next ones. A domain may reach the largest level at which it and the others' needs, each capped at that
    /// level, come to at most M, and at which what the others hold and the reserves they do not use yet still fit
    /// beside it. So a domain whose deliveries keep up is not refused while another holds most of the memory, and
    /// one whose deliveries fail stops where the others' needs begin. A domain at or below M / k is within its
    /// share whatever the others need: the others are looked at only above it, on a map of the known domains.
    pub fn over_share<'a>(
        &self,
        domains: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Option<OverShare> {
        let max = self.max_resident;
        let residents = self
            .shared
            .residents
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let sharing = residents.sharing;
        if sharing < 2 {
            return None;
        }
        let reserve = (max / (2 * sharing)).max(1);
        // Under the lock only what the cheap tests need, and a copy of the others' needs for a domain above an
        // equal share.
        let mut looked: Vec<(&'a str, usize, usize, Others)> = Vec::new();
        for (domain, wanted) in domains {
            if residents.total.saturating_add(wanted).saturating_mul(2) < max {
                continue;
            }
            let held = residents.held(domain);
            if held.saturating_add(wanted) <= max / sharing {
                continue;
            }
            looked.push((domain, held, wanted, residents.others(domain, reserve)));
        }
        drop(residents);
        looked
            .into_iter()
            .find_map(|(domain, held, wanted, others)| {
                let level = held.saturating_add(wanted);
                (!others.allow(level, max)).then(|| OverShare {
                    domain: domain.to_owned(),
                    held,
                    wanted,
                    share: others.share(max),
                    max,
                    holding: sharing,
                })
            })
    }

    /// The global `message_expiration` (see [`EngineLimits::message_expiration`]).
    pub fn message_expiration(&self) -> std::time::Duration {
        self.message_expiration
    }

    /// Fails `notification`, which no queue here takes (its domain cannot be delivered), permanently with
    /// `error`: logged and reported (status book, webhooks) as a queue's final failure is, counted under `label`
    /// in its domain's counters, and forgotten by the observer (the spool removes it). Its P line names the binding
    /// group `default`: with no settings for the domain there is no group to name, and the R line of a notification
    /// whose settings cannot be built says `default` too (`inbound::accept`).
    pub fn fail_unqueued(
        &self,
        notification: &Notification,
        retries: u32,
        error: &str,
        label: &str,
    ) {
        let own = notification.push.apns_id.map(|id| id.encode());
        let record = crate::logs::OutcomeRecord {
            kind: crate::logs::OutcomeKind::Permanent,
            notification,
            binding_group: DEFAULT_BINDING_GROUP,
            binding: &notification.binding,
            retries,
            remote_ip: None,
            transaction_id: own.as_ref().and_then(|t| std::str::from_utf8(t).ok()),
            status: None,
            error,
            connected: false,
            bytes: notification.push.payload.len(),
            at: message::unix_now(),
            apns_unique_id: None,
            apns_timestamp_ms: None,
        };
        self.shared.logs.outcome(&record);
        if let Some(l) = self.shared.listener.get() {
            l.queued(notification, retries);
            l.outcome(&record);
        }
        let key = QueueKey {
            domain: notification.domain.clone(),
            binding: notification.binding.clone(),
        };
        let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        self.shared
            .handle_of(&mut queues, key)
            .stats
            .permanent(label);
        drop(queues);
        self.shared.finished(&[notification.id]);
    }

    /// [`Engine::submit`] with room taken by [`Engine::try_reserve`]; waits for room only when the reservation
    /// is used up.
    ///
    /// Cancel safety: as [`Engine::submit`]'s. Dropped before it returns, the notification is not queued; the room
    /// it took from `reservation` (one notification's) goes back to the engine, not to the reservation, so that
    /// the engine's memory is as if the reservation had held one less.
    pub async fn submit_reserved(
        &self,
        notification: Notification,
        reservation: &mut Reservation,
    ) -> Result<(), SubmitError> {
        match reservation.0.as_mut().and_then(|p| p.split(1)) {
            Some(one) => {
                // The notification's from here: `hand_over` counts it, and guards it before its first await.
                one.forget();
                self.hand_over(Queued::new(notification), None, Arrival::New)
                    .await
            }
            None => self.submit(notification).await,
        }
    }

    /// Hands `item`, whose memory permit is taken, to its domain's task; a new one counts as received. The permit
    /// is counted for the notification's domain from here ([`Residents`]), and given back if the notification is
    /// not handed over, whether the hand-off fails or this future is dropped ([`Taken`]).
    async fn hand_over(
        &self,
        item: Box<Queued>,
        delay: Option<std::time::Duration>,
        arrival: Arrival,
    ) -> Result<(), SubmitError> {
        let (binding, domain) = (
            item.notification.binding.clone(),
            item.notification.domain.clone(),
        );
        self.shared.took(&domain);
        let taken = Taken {
            shared: &self.shared,
            domain: &domain,
            id: Some(item.notification.id),
            handed: false,
        };
        if let Some(l) = self.shared.listener.get() {
            match delay {
                // Restored from the spool with its retry still ahead: its status shows when it is due.
                Some(d) => l.queued_until(
                    &item.notification,
                    item.retries,
                    std::time::SystemTime::now() + d,
                ),
                None => l.queued(&item.notification, item.retries),
            }
        }
        let event = match delay {
            Some(d) => DomainEvent::EnqueueDelayed(item, d),
            None => DomainEvent::Enqueue(item),
        };
        self.shared
            .hand_taken(taken, &binding, event, arrival)
            .await
    }

    /// Counters of one domain (over every binding it is delivered from), if it has seen traffic.
    pub fn stats(&self, domain: &str) -> Option<Arc<DomainStats>> {
        self.all_stats()
            .into_iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, s)| s)
    }

    /// Counters of one domain delivered from one binding, if that queue has seen traffic.
    pub fn binding_stats(&self, binding: &str, domain: &str) -> Option<Arc<DomainStats>> {
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        domains
            .iter()
            .find(|(k, _)| k.domain.eq_ignore_ascii_case(domain) && &*k.binding == binding)
            .map(|(_, h)| h.stats.clone())
    }

    /// Every domain that has seen traffic, with its counters. A domain delivered from several bindings has one
    /// queue per binding: its counters here are their sum at the time of the call.
    pub fn all_stats(&self) -> Vec<(Arc<str>, Arc<DomainStats>)> {
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_domain: std::collections::BTreeMap<Arc<str>, Vec<Arc<DomainStats>>> =
            std::collections::BTreeMap::new();
        for (k, h) in domains.iter() {
            by_domain
                .entry(k.domain.clone())
                .or_default()
                .push(h.stats.clone());
        }
        // With what queues of theirs that were forgotten had counted (see `EngineShared::make_room`).
        let carried = self
            .shared
            .carried
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (domain, stats) in carried.iter() {
            if let Some(parts) = by_domain.get_mut(domain) {
                parts.push(stats.clone());
            }
        }
        drop(carried);
        drop(domains);
        by_domain
            .into_iter()
            .map(|(d, mut parts)| {
                let stats = if parts.len() == 1 {
                    parts.remove(0)
                } else {
                    Arc::new(DomainStats::sum(&parts))
                };
                (d, stats)
            })
            .collect()
    }

    /// Every (binding, domain) queue that has seen traffic (running or retired for idleness), as (binding, domain,
    /// its own counters): by domain, then by binding with `default` first.
    pub fn binding_stats_all(&self) -> Vec<(Arc<str>, Arc<str>, Arc<DomainStats>)> {
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Arc<str>, Arc<str>, Arc<DomainStats>)> = domains
            .iter()
            .map(|(k, h)| (k.binding.clone(), k.domain.clone(), h.stats.clone()))
            .collect();
        drop(domains);
        let rank = |(binding, domain, _): &(Arc<str>, Arc<str>, Arc<DomainStats>)| {
            (
                domain.clone(),
                &**binding != message::DEFAULT_BINDING,
                binding.clone(),
            )
        };
        out.sort_by_key(rank);
        out
    }

    /// Every running queue as (binding, domain), sorted (not those retired for idleness: see
    /// [`EngineShared::retire`]).
    pub fn queues(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<(Arc<str>, Arc<str>)> = domains
            .iter()
            .filter(|(_, h)| h.sender.is_some())
            .map(|(k, _)| (k.binding.clone(), k.domain.clone()))
            .collect();
        keys.sort();
        keys
    }

    /// The name [`Engine::reconfigure`] gives a queue: `domain` for the default binding, else `binding:domain`.
    pub fn queue_name(binding: &str, domain: &str) -> String {
        if binding == message::DEFAULT_BINDING {
            domain.to_owned()
        } else {
            format!("{binding}:{domain}")
        }
    }

    /// Makes every delayed notification of `domain` (from every binding) due now. False when the domain has no
    /// queue (a retired one has nothing delayed).
    pub fn flush(&self, domain: &str) -> bool {
        let Some(senders) = self.senders(Some(domain)) else {
            return false;
        };
        for s in senders {
            let _ = s.0.send(DomainEvent::Flush);
        }
        true
    }

    /// Pauses (`true`) or resumes delivery to `domain` from every binding: a paused queue keeps accepting and
    /// holds what it has; a retired one is paused when it starts again. False when the domain has no queue.
    /// The mark is set under the engine-wide lock, so that a queue retiring meanwhile keeps it.
    pub fn set_paused(&self, domain: &str, paused: bool) -> bool {
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for (_, h) in domains
            .iter()
            .filter(|(k, _)| k.domain.eq_ignore_ascii_case(domain))
        {
            any = true;
            h.stats
                .paused
                .store(paused, std::sync::atomic::Ordering::Relaxed);
            if let Some(sender) = &h.sender {
                let _ = sender.0.send(DomainEvent::Wake);
            }
        }
        any
    }

    /// The running queues of `domain` (one per binding it is delivered from), or of every domain; `None` when
    /// the domain has no queue, running or retired.
    fn senders(&self, domain: Option<&str>) -> Option<Vec<DomainSender>> {
        self.senders_of(None, domain)
    }

    /// [`Engine::senders`], of one binding only when `binding` is given. `domain` is matched without regard to case
    /// (queues are keyed by the domain in lower case; the console passes it as typed).
    fn senders_of(&self, binding: Option<&str>, domain: Option<&str>) -> Option<Vec<DomainSender>> {
        let domain = domain.map(str::to_ascii_lowercase);
        let domains = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut known = false;
        let mut keyed: Vec<(&QueueKey, DomainSender)> = domains
            .iter()
            .filter(|(k, _)| domain.as_deref().is_none_or(|d| &*k.domain == d))
            .filter(|(k, _)| binding.is_none_or(|b| &*k.binding == b))
            .inspect(|_| known = true)
            .filter_map(|(k, h)| Some((k, h.sender.clone()?)))
            .collect();
        if !known && domain.is_some() {
            return None;
        }
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        Some(keyed.into_iter().map(|(_, s)| s).collect())
    }

    /// Queued notifications of `domain` (active first, then delayed by due time; binding after binding, by name),
    /// for `showqueue`.
    pub async fn showqueue(
        &self,
        domain: &str,
        limit: usize,
        offset: usize,
    ) -> Option<Vec<QueueEntry>> {
        self.showqueue_binding(None, domain, limit, offset).await
    }

    /// [`Engine::showqueue`] for one binding's queue of `domain` (`None`: every binding's).
    pub async fn showqueue_binding(
        &self,
        binding: Option<&str>,
        domain: &str,
        limit: usize,
        offset: usize,
    ) -> Option<Vec<QueueEntry>> {
        let senders = self.senders_of(binding, Some(domain))?;
        let mut all = Vec::new();
        for sender in senders {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let wanted = offset.saturating_add(limit);
            if sender
                .0
                .send(DomainEvent::List {
                    limit: wanted.saturating_sub(all.len()),
                    offset: 0,
                    reply,
                })
                .is_err()
            {
                continue;
            }
            if let Ok(entries) = rx.await {
                all.extend(entries);
            }
            if all.len() >= wanted {
                break;
            }
        }
        Some(all.into_iter().skip(offset).take(limit).collect())
    }

    /// Fails every queued notification of `domain` (from every binding) that is not on the wire; returns how many.
    pub async fn fail_domain(&self, domain: &str, reason: &str) -> Option<usize> {
        let senders = self.senders(Some(domain))?;
        let mut total = 0;
        for sender in senders {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if sender
                .0
                .send(DomainEvent::FailAll {
                    reason: reason.to_owned(),
                    reply,
                })
                .is_err()
            {
                continue;
            }
            total += rx.await.unwrap_or(0);
        }
        Some(total)
    }

    /// Finds a queued notification by id in any domain and applies `action` (`message details|retry|fail`).
    pub async fn message(&self, id: &str, action: MessageAction) -> Option<QueueEntry> {
        for sender in self.senders(None).unwrap_or_default() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let event = DomainEvent::Message {
                id: id.to_owned(),
                action: action.clone(),
                reply,
            };
            if sender.0.send(event).is_err() {
                continue;
            }
            if let Ok(Some(entry)) = rx.await {
                return Some(entry);
            }
        }
        None
    }

    /// Re-resolves the settings of every (binding, domain) queue (after a configuration reload): connections of
    /// the old settings finish what they carry and close; new ones use the new settings. Errors name the domain
    /// (`domain` for the default binding, `binding:domain` otherwise).
    ///
    /// The engine-wide lock is held only to list the queues: settings are resolved without it (submitters go on),
    /// on a blocking thread.
    pub async fn reconfigure(&self) -> Vec<(String, ResolveError)> {
        // The verdicts are delivered even if the caller goes away meanwhile (a dashboard request whose client hung
        // up): a reload stopped between counting itself and telling the queues would leave them on settings no
        // longer in force until the next one.
        match tokio::spawn(reconfigure_queues(self.shared.clone())).await {
            Ok(errors) => errors,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Vec::new(),
        }
    }
}

/// [`Engine::reconfigure`]'s work, on a task of its own.
async fn reconfigure_queues(shared: Arc<EngineShared>) -> Vec<(String, ResolveError)> {
    let (epoch, queues): (Epoch, Vec<(QueueKey, DomainSender)>) = {
        let domains = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = shared
            .reconfigurations
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let mut queues: Vec<_> = domains
            .iter()
            .filter_map(|(k, h)| Some((k.clone(), h.sender.clone()?)))
            .collect();
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        (epoch, queues)
    };
    let resolver = shared.resolver.clone();
    let resolved = run_blocking(move || {
        queues
            .into_iter()
            .map(|(key, sender)| {
                let settings = resolver.resolve_binding(&key.binding, &key.domain);
                (key, sender, settings)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut errors = Vec::new();
    for (key, sender, settings) in resolved {
        match settings {
            Ok(settings) => {
                let _ = sender.0.send(DomainEvent::Reconfigure { settings, epoch });
            }
            Err(e) => {
                // Its notifications wait instead of going out on settings no longer in force.
                let _ = sender.0.send(DomainEvent::Unroutable {
                    reason: e.to_string(),
                    epoch,
                });
                errors.push((Engine::queue_name(&key.binding, &key.domain), e));
            }
        }
    }
    errors
}

/// Resolves the settings of (binding, domain) on a blocking thread (see [`run_blocking`]).
async fn resolve_blocking(
    resolver: Arc<dyn SettingsResolver>,
    binding: Arc<str>,
    domain: Arc<str>,
) -> Result<Result<Arc<DeliverySettings>, ResolveError>, SubmitError> {
    run_blocking(move || resolver.resolve_binding(&binding, &domain))
        .await
        .ok_or(SubmitError::ShuttingDown)
}

/// Runs `f`, which may read files and do CPU-heavy work, from synchronous code that may be on an async thread:
/// on a multi-threaded runtime the thread becomes a blocking one while `f` runs (other tasks move to other
/// threads); elsewhere `f` simply runs.
pub(crate) fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs `f`, which may read files and do CPU-heavy work, on tokio's blocking pool instead of an async thread.
/// `None` when the runtime shuts down before it runs; a panic in `f` goes on in the caller.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Some(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod token_update_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use herald_conf::Config;

    /// A resolver whose answer the test changes, and which can hold one resolution (with the answer it read
    /// when asked) until the test lets it go.
    struct GatedResolver {
        current: Mutex<Result<Arc<DeliverySettings>, ResolveError>>,
        gate: Mutex<
            Option<(
                std::sync::mpsc::SyncSender<()>,
                std::sync::mpsc::Receiver<()>,
            )>,
        >,
    }

    impl SettingsResolver for GatedResolver {
        fn resolve(&self, _domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            let answer = self.current.lock().unwrap().clone();
            let gate = self.gate.lock().unwrap().take();
            if let Some((asked, go)) = gate {
                asked.send(()).unwrap();
                go.recv().unwrap();
            }
            answer
        }
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().port()
    }

    /// An engine on `resolver` with the default limits and no logs.
    fn test_engine(resolver: Arc<dyn SettingsResolver>) -> Engine {
        Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        )
    }

    fn settings_to(port: u16) -> DeliverySettings {
        DeliverySettings::for_tests("apps.example", port)
    }

    /// A submitter that resolved a queue's settings while the queue's task went away (it retired in between, or
    /// ended) starts a new task for its notification instead of sending it into the channel of the gone one (where
    /// it would be lost, or refused as if herald were stopping).
    #[tokio::test]
    async fn a_queue_gone_while_its_settings_were_resolved_is_started_again() {
        let resolver = Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings_to(
            closed_port(),
        ))))));
        let engine = test_engine(resolver);
        let key = QueueKey {
            domain: Arc::from("apps.example"),
            binding: Arc::from("default"),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        {
            let mut queues = engine.shared.queues.lock().unwrap();
            engine.shared.handle_of(&mut queues, key.clone()).sender =
                Some(domain::DomainSender(tx));
        }
        engine.shared.take_permit("apps.example");
        let item = message::Queued::new(notification(1));
        engine
            .shared
            .start_queue(key.clone(), DomainEvent::Enqueue(item), Arrival::New)
            .await
            .expect("queued on a new task");
        let queues = engine.shared.queues.lock().unwrap();
        let handle = queues.get(&key).unwrap();
        assert!(handle.sender.as_ref().is_some_and(|s| !s.0.is_closed()));
        assert_eq!(
            handle
                .stats
                .task_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// A notification no queue here can take fails with a P line, a final outcome and a count of its domain;
    /// its binding group is `default` (no settings name another), not its binding's name.
    #[tokio::test]
    async fn a_notification_failed_unqueued_names_the_default_binding_group() {
        struct Records(Mutex<Vec<(crate::logs::OutcomeKind, String, String, String)>>);
        impl OutcomeListener for Records {
            fn outcome(&self, r: &crate::logs::OutcomeRecord<'_>) {
                self.0.lock().unwrap().push((
                    r.kind,
                    r.binding_group.to_owned(),
                    r.binding.to_owned(),
                    r.error.to_owned(),
                ));
            }
        }
        let resolver = Arc::new(SwitchResolver(Mutex::new(Err(
            ResolveError::UnknownDomain("apps.example".into()),
        ))));
        let engine = test_engine(resolver);
        let records = Arc::new(Records(Mutex::new(Vec::new())));
        engine.set_outcome_listener(records.clone());
        let mut n = notification(1);
        n.binding = Arc::from("b");
        engine.fail_unqueued(&n, 2, "554 5.4.7 gone", "Unroutable");
        let seen = records.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![(
                crate::logs::OutcomeKind::Permanent,
                "default".to_owned(),
                "b".to_owned(),
                "554 5.4.7 gone".to_owned()
            )]
        );
        let stats = engine.stats("apps.example").expect("the domain is counted");
        assert_eq!(
            stats.permanent.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// A resolver whose answer the test changes (a reload).
    struct SwitchResolver(Mutex<Result<Arc<DeliverySettings>, ResolveError>>);

    impl SettingsResolver for SwitchResolver {
        fn resolve(&self, _domain: &str) -> Result<Arc<DeliverySettings>, ResolveError> {
            self.0.lock().unwrap().clone()
        }
    }

    pub(super) fn notification(i: u8) -> Notification {
        Notification {
            id: MessageId::NONE,
            batch_id: MessageId::NONE,
            conn_id: MessageId::NONE,
            domain: Arc::from("apps.example"),
            binding: Arc::from("default"),
            push: herald_apns::client::PushRequest {
                token: herald_apns::token_hex::DeviceToken::from_hex(
                    &format!("{i:02x}").repeat(32),
                )
                .unwrap(),
                topic: None,
                push_type: None,
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: bytes::Bytes::from_static(b"{}"),
            },
            sender: Arc::from(""),
            recipient_given: None,
            received_at: message::unix_now(),
        }
    }

    /// A reload whose configuration cannot deliver a running queue (its domain or route removed) stops that queue
    /// sending on the settings no longer in force: its notifications wait, and go out once a reload delivers them
    /// again (here to a new route).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_the_new_configuration_cannot_deliver_sends_nothing_until_one_can() {
        let old_route = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        old_route.set_nonblocking(true).unwrap();
        let new_route = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut old_settings = settings_to(old_route.local_addr().unwrap().port());
        old_settings.idle_timeout = Some(std::time::Duration::from_millis(10));
        let resolver = Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(old_settings)))));
        let engine = test_engine(resolver.clone());
        engine.set_held(true);
        engine.submit(notification(1)).await.unwrap();
        // The reload: the domain is no longer configured.
        *resolver.0.lock().unwrap() = Err(ResolveError::UnknownDomain("apps.example".into()));
        assert_eq!(engine.reconfigure().await.len(), 1);
        engine.set_held(false);
        engine.submit(notification(2)).await.unwrap();
        // A reload that routes it again, elsewhere: the waiting notifications go there.
        *resolver.0.lock().unwrap() = Ok(Arc::new(settings_to(
            new_route.local_addr().unwrap().port(),
        )));
        assert!(engine.reconfigure().await.is_empty());
        let accepted =
            tokio::time::timeout(std::time::Duration::from_secs(20), new_route.accept()).await;
        assert!(
            accepted.is_ok(),
            "the queue never delivered to the new route"
        );
        assert!(
            old_route.accept().is_err(),
            "the queue connected to the route of the configuration no longer in force"
        );
    }

    /// A queue whose first settings were resolved from the configuration before a reload, and which started after
    /// the reload listed the queues, still gets the new configuration (here: a new route, which it connects to).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_starting_during_a_reload_gets_the_new_settings() {
        let old_port = closed_port();
        let new_route = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new_port = new_route.local_addr().unwrap().port();
        let (asked_tx, asked_rx) = std::sync::mpsc::sync_channel(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel(1);
        let resolver = Arc::new(GatedResolver {
            current: Mutex::new(Ok(Arc::new(settings_to(old_port)))),
            gate: Mutex::new(Some((asked_tx, go_rx))),
        });
        let engine = Arc::new(test_engine(resolver.clone()));
        let notification = notification(0xab);
        let submitter = engine.clone();
        let submit = tokio::spawn(async move { submitter.submit(notification).await });
        tokio::task::spawn_blocking(move || asked_rx.recv().unwrap())
            .await
            .unwrap();
        // The reload: the configuration changes, and the engine lists its queues (none yet).
        *resolver.current.lock().unwrap() = Ok(Arc::new(settings_to(new_port)));
        assert!(engine.reconfigure().await.is_empty());
        go_tx.send(()).unwrap();
        submit.await.unwrap().unwrap();
        let accepted =
            tokio::time::timeout(std::time::Duration::from_secs(20), new_route.accept()).await;
        assert!(
            accepted.is_ok(),
            "the queue never connected to the new route"
        );
    }

    /// Two reloads back to back whose resolutions finish in the wrong order: the first (whose configuration could
    /// not deliver the queue) answers after the second (which routes it again). The queue keeps the later
    /// verdict and delivers; it does not wait, unroutable, for a third reload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_reloads_late_verdict_does_not_override_a_newer_one() {
        let old_port = closed_port();
        let new_route = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let resolver = Arc::new(GatedResolver {
            current: Mutex::new(Ok(Arc::new(settings_to(old_port)))),
            gate: Mutex::new(None),
        });
        let engine = Arc::new(test_engine(resolver.clone()));
        engine.set_held(true);
        engine.submit(notification(0xcd)).await.unwrap();
        // The first reload removes the domain; its resolution is held after reading that.
        let (asked_tx, asked_rx) = std::sync::mpsc::sync_channel(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel(1);
        *resolver.current.lock().unwrap() = Err(ResolveError::UnknownDomain("apps.example".into()));
        *resolver.gate.lock().unwrap() = Some((asked_tx, go_rx));
        let first = tokio::spawn({
            let engine = engine.clone();
            async move { engine.reconfigure().await.len() }
        });
        tokio::task::spawn_blocking(move || asked_rx.recv().unwrap())
            .await
            .unwrap();
        // The second reload routes it to a new place and finishes first.
        *resolver.current.lock().unwrap() = Ok(Arc::new(settings_to(
            new_route.local_addr().unwrap().port(),
        )));
        assert!(engine.reconfigure().await.is_empty());
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1, "the first reload's verdict");
        engine.set_held(false);
        let accepted =
            tokio::time::timeout(std::time::Duration::from_secs(20), new_route.accept()).await;
        assert!(
            accepted.is_ok(),
            "the queue took the older reload's verdict and never delivered"
        );
    }

    /// A connection attempt to the old route, under way when a reload made the queue unroutable, fails after it:
    /// its notifications are not charged a retry (here `mx_failures_to_delay` is 1, so a counted failure would
    /// delay them all); they wait for a configuration that delivers them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connect_failure_on_the_old_route_does_not_delay_an_unroutable_queue() {
        use tokio::io::AsyncReadExt;
        // Accepts the connection and never answers the TLS handshake: the attempt times out after 1 s.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = settings_to(silent.local_addr().unwrap().port());
        settings.mx_failures_to_delay = 1;
        let resolver = Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings)))));
        let engine = test_engine(resolver.clone());
        engine.submit(notification(0xef)).await.unwrap();
        let (mut attempt, _) =
            tokio::time::timeout(std::time::Duration::from_secs(20), silent.accept())
                .await
                .expect("the queue connects")
                .unwrap();
        *resolver.0.lock().unwrap() = Err(ResolveError::UnknownDomain("apps.example".into()));
        assert_eq!(engine.reconfigure().await.len(), 1);
        // The attempt gives up (the client closes the connection).
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            attempt.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "the connection attempt never gave up");
        let queued = engine
            .showqueue("apps.example", 10, 0)
            .await
            .expect("the queue is still there");
        assert_eq!(queued.len(), 1);
        assert_eq!(
            (queued[0].queue, queued[0].retries),
            ("active", 0),
            "the notification was charged the failed attempt of a route no longer in force"
        );
        let stats = engine.stats("apps.example").unwrap();
        assert_eq!(
            stats.transient.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// A simulator, and a resolver whose configuration delivers `apps.example` to it with token auth.
    async fn simulated_apns(
        dir: &std::path::Path,
    ) -> (herald_sim::SimHandle, Arc<crate::delivery::ConfigResolver>) {
        use herald_sim::{Pki, SimConfig, Simulator};
        let pki = Pki::generate(&dir.join("pki"), &["com.example.app".to_owned()]).unwrap();
        let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
            .await
            .unwrap();
        let m = &pki.manifest;
        let text = format!(
            r#"
domain "apps.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{h2}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "com.example.app"
}}
"#,
            h2 = sim.addrs.h2.port(),
            ca = m.ca_cert.display(),
            p8 = m.token_key.p8.display(),
            kid = m.token_key.key_id,
            tid = m.token_key.team_id,
        );
        let config = Config::parse_str("herald.conf", &text).unwrap();
        let resolver = Arc::new(crate::delivery::ConfigResolver::new(Arc::new(config)));
        (sim, resolver)
    }

    /// Waits (at most 60 s) until `done` holds.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}: never");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A queue whose task fails (a panic: a defect) goes on with a new task, with the same counters: the
    /// notifications the failed task held and those submitted afterwards are all delivered, each once, and the
    /// memory they took is given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_whose_task_fails_goes_on_with_a_new_task() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (sim, resolver) = simulated_apns(dir.path()).await;
        let engine = Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 100,
                ..EngineLimits::default()
            },
        );
        engine.set_held(true);
        for i in 0..3 {
            engine.submit(notification(i)).await.unwrap();
        }
        for sender in engine.senders(Some("apps.example")).unwrap() {
            sender.0.send(DomainEvent::Panic(None)).unwrap();
        }
        let stats = engine.stats("apps.example").unwrap();
        wait_until("the task failed", || {
            stats.task_failures.load(Ordering::Relaxed) == 1
        })
        .await;
        engine.set_held(false);
        for i in 3..5 {
            engine.submit(notification(i)).await.unwrap();
        }
        wait_until("every notification delivered", || {
            stats.delivered.load(Ordering::Relaxed) == 5
        })
        .await;
        wait_until("the memory given back", || engine.resident_room() == 100).await;
        assert_eq!(engine.resident_in("apps.example"), 0);
        let mut tokens: Vec<String> = sim.record().into_iter().map(|r| r.token).collect();
        tokens.sort();
        let expected: Vec<String> = (0..5u8).map(|i| format!("{i:02x}").repeat(32)).collect();
        assert_eq!(tokens, expected, "each notification delivered once");
        assert_eq!(stats.received.load(Ordering::Relaxed), 5);
        assert_eq!(stats.task_failures.load(Ordering::Relaxed), 1);
    }

    /// With the JetStream spool, a pulled notification that the queue's task fails with in hand (a panic: a
    /// defect) is not left held by this node, where its in-progress acks would keep it from every node until the
    /// process stops: it goes back to the stream, comes again, and is delivered; the node holds nothing after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pulled_notification_a_failed_task_took_with_it_goes_back_to_the_stream() {
        use herald_spool::Spool as _;
        use std::sync::atomic::Ordering;
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let nats = herald_testkit::nats::single(&dir.path().join("nats"));
        let (sim, resolver) = simulated_apns(dir.path()).await;
        let mut options = herald_spool::JetStreamOptions::new(vec![nats.url()], "failed_task");
        // Longer than the test: only a release by this node can bring the notification back.
        options.ack_wait = std::time::Duration::from_secs(300);
        let spool = herald_spool::JetStreamSpool::connect(options)
            .await
            .unwrap();
        let mut pulled = spool.take_deliveries().unwrap();
        wait_until("the stream set up", || spool.connected()).await;
        let engine = Arc::new(Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 100,
                ..EngineLimits::default()
            },
        ));
        engine.set_observer(Arc::new(crate::spool::SpoolBridge::shared(spool.clone())));
        let mut n = notification(0x5a);
        n.id = MessageId::from_parts(1, 1_800_000_000_000, 7);
        spool
            .append(vec![crate::spool::to_stored(&n)])
            .await
            .unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), pulled.recv())
            .await
            .expect("the notification pulled")
            .unwrap();
        // The queue's task takes it in, with its memory permit as the engine hands it over, and fails with it.
        let (restored, retries, _) = crate::spool::from_stored(first).unwrap();
        let mut item = Queued::new(restored);
        item.retries = retries;
        engine.shared.take_permit("apps.example");
        let (binding, domain) = (n.binding.clone(), n.domain.clone());
        engine
            .shared
            .hand_event(
                &binding,
                &domain,
                DomainEvent::Panic(Some(item)),
                Arrival::Restored,
            )
            .await
            .unwrap();
        // What the stream hands this node again is queued, as the pull queues it.
        let puller = tokio::spawn({
            let engine = engine.clone();
            async move {
                while let Some(stored) = pulled.recv().await {
                    let (n, retries, next) = crate::spool::from_stored(stored).unwrap();
                    engine.restore(n, retries, next).await.unwrap();
                }
            }
        });
        let stats = engine.stats("apps.example").unwrap();
        wait_until("the notification delivered", || {
            stats.delivered.load(Ordering::Relaxed) == 1
        })
        .await;
        wait_until("nothing held by the node", || spool.held() == 0).await;
        wait_until("the memory given back", || engine.resident_room() == 100).await;
        assert_eq!(engine.resident_in("apps.example"), 0);
        assert_eq!(stats.task_failures.load(Ordering::Relaxed), 1);
        let tokens: Vec<String> = sim.record().into_iter().map(|r| r.token).collect();
        assert_eq!(tokens, vec!["5a".repeat(32)], "delivered once");
        puller.abort();
        spool.close().await.unwrap();
    }

    /// Told which notifications no queue holds any more.
    #[derive(Default)]
    struct Abandoned(Mutex<Vec<(MessageId, std::time::Duration)>>);

    impl QueueObserver for Abandoned {
        fn finished(&self, _: &[MessageId]) {}
        fn rescheduled(&self, _: MessageId, _: u32, _: SystemTime) {}
        fn abandoned(&self, ids: &[MessageId], hold: std::time::Duration) -> bool {
            let mut all = self.0.lock().unwrap();
            all.extend(ids.iter().map(|id| (*id, hold)));
            true
        }
    }

    /// A queue whose task fails while a reload has removed its domain: what the task held cannot go to a new task;
    /// its memory is given back and the observer (the spool) hears of it, with the hold of the failed queue, rather
    /// than the spool keeping it as held for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_failed_task_cannot_hand_over_is_told_to_the_observer() {
        let resolver = Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings_to(
            closed_port(),
        ))))));
        let engine = Engine::new(
            resolver.clone(),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 10,
                ..EngineLimits::default()
            },
        );
        let abandoned = Arc::new(Abandoned::default());
        engine.set_observer(abandoned.clone());
        engine.set_held(true);
        let mut n = notification(0x3c);
        n.id = MessageId::from_parts(1, 1_800_000_000_000, 9);
        engine.submit(n.clone()).await.unwrap();
        *resolver.0.lock().unwrap() = Err(ResolveError::UnknownDomain("apps.example".into()));
        for sender in engine.senders(Some("apps.example")).unwrap() {
            sender.0.send(DomainEvent::Panic(None)).unwrap();
        }
        wait_until("the observer told", || {
            !abandoned.0.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(
            *abandoned.0.lock().unwrap(),
            vec![(n.id, std::time::Duration::from_secs(1))]
        );
        wait_until("the memory given back", || engine.resident_room() == 10).await;
        assert_eq!(engine.resident_in("apps.example"), 0);
    }

    /// The share worked out from the needs in order is the largest level the others allow, as a count up from 0
    /// finds it, for many mixes of needs and held memory.
    #[test]
    fn the_share_is_the_largest_level_allowed() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below) as usize
        };
        for _ in 0..2000 {
            let max = 1 + next(200);
            let count = next(6);
            let mut others = Others {
                held: 0,
                unused_reserves: 0,
                needs: Vec::new(),
            };
            for _ in 0..count {
                let held = next(max as u64 / 2 + 1);
                let need = held + next(10);
                others.held += held;
                others.unused_reserves += need - held;
                others.needs.push(need);
            }
            let counted = (0..=max).take_while(|&l| others.allow(l, max)).last();
            let share = Others {
                needs: others.needs.clone(),
                ..others
            }
            .share(max);
            match counted {
                Some(l) => assert_eq!(share, l, "max {max}, needs {:?}", others.needs),
                None => assert_eq!(share, 0, "max {max}, needs {:?}", others.needs),
            }
        }
    }

    /// Under pressure (half of the maximum held), the memory is shared max-min fairly among the domains the engine
    /// keeps a queue of, each needing what it holds or at least a reserve of M / 2k: a domain whose deliveries fail is
    /// stopped where the others' needs begin, a domain holding little is never refused, a batch counts with what
    /// it would add; below half, or with one domain known, nothing is refused.
    #[test]
    fn the_memory_is_shared_fairly_under_pressure() {
        let engine = Engine::new(
            Arc::new(StaticResolver::default()),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 100,
                ..EngineLimits::default()
            },
        );
        let hold = |domain: &str, n: usize| {
            for _ in 0..n {
                engine.shared.take_permit(domain);
            }
        };
        let run = |domain: &str| engine.shared.queue_known(&Arc::from(domain), true);
        // One domain known: all of it is its share, however full the engine.
        run("a.example");
        hold("a.example", 90);
        assert_eq!(engine.over_share([("a.example", 10)]), None);
        engine.shared.give_back("a.example", 60);
        // Two known (b.example holding nothing, its notifications delivered as they come): b.example needs a
        // reserve of 100 / 4 = 25, so a.example may hold 75. Below half (30 held), nothing is refused.
        run("b.example");
        assert_eq!(engine.over_share([("a.example", 45)]), None);
        // A batch that itself would bring the engine past half is looked at with what it adds.
        assert_eq!(
            engine.over_share([("a.example", 46)]).map(|o| o.share),
            Some(75)
        );
        hold("a.example", 45);
        assert_eq!(
            engine.over_share([("a.example", 0)]),
            None,
            "75 is its share"
        );
        let over = OverShare {
            domain: "a.example".into(),
            held: 75,
            wanted: 1,
            share: 75,
            max: 100,
            holding: 2,
        };
        assert_eq!(engine.over_share([("a.example", 1)]), Some(over.clone()));
        // A batch of several domains is named by the one over its share; b.example, holding nothing, is not.
        assert_eq!(engine.over_share([("b.example", 20)]), None);
        assert_eq!(
            engine.over_share([("b.example", 1), ("a.example", 1)]),
            Some(over)
        );
        // Twenty more domains known, idle (each needs a reserve of 100 / 44 = 2); a.example holds 40, b.example
        // 10 (half full). b.example, holding more than an equal share (100 / 22), may still reach 20: what
        // a.example holds and the idle ones' reserves (40 + 40) leave.
        for i in 0..20 {
            run(&format!("idle{i}.example"));
        }
        engine.shared.give_back("a.example", 35);
        hold("b.example", 10);
        assert_eq!(engine.over_share([("b.example", 10)]), None);
        assert_eq!(
            engine
                .over_share([("b.example", 11)])
                .map(|o| (o.held, o.share, o.holding)),
            Some((10, 20, 22))
        );
        // a.example may reach 50 beside b.example's 10 and the idle ones' 40.
        assert_eq!(engine.over_share([("a.example", 10)]), None);
        assert_eq!(
            engine.over_share([("a.example", 11)]).map(|o| o.share),
            Some(50)
        );
        // Every queue forgotten but a.example's: it is alone again.
        for i in 0..20 {
            engine
                .shared
                .queue_known(&Arc::from(format!("idle{i}.example").as_str()), false);
        }
        engine.shared.queue_known(&Arc::from("b.example"), false);
        assert_eq!(engine.over_share([("a.example", 60)]), None);
    }

    /// A store that takes back every notification a queue parks.
    struct TakesParkedBack;

    impl QueueObserver for TakesParkedBack {
        fn finished(&self, _: &[MessageId]) {}
        fn rescheduled(&self, _: MessageId, _: u32, _: SystemTime) {}
        fn hand_back(&self, _: MessageId, _: u32, _: std::time::Duration) -> bool {
            true
        }
        fn parked(&self, delta: i64) -> usize {
            usize::try_from(delta).unwrap_or(0)
        }
    }

    /// The count by domain follows every notification's memory permit, whichever way it comes back: a final outcome
    /// (`fail domain`), a notification the store takes back (a parked one), one no queue takes (its domain cannot
    /// be delivered), and one a failed task took with it; it never counts what is no longer held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_count_by_domain_follows_every_permit() {
        let port = closed_port();
        let resolver = StaticResolver::default()
            .with(DeliverySettings::for_tests("a.example", port))
            .with(DeliverySettings::for_tests("b.example", port));
        let engine = Engine::new(
            Arc::new(resolver),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 20,
                ..EngineLimits::default()
            },
        );
        engine.set_observer(Arc::new(TakesParkedBack));
        engine.set_held(true);
        let to = |domain: &str, i: u8| {
            let mut n = notification(i);
            n.domain = Arc::from(domain);
            n.id = MessageId::from_parts(1, 1_800_000_000_000, u64::from(i));
            n
        };
        let counts = || {
            (
                engine.resident_in("a.example"),
                engine.resident_in("b.example"),
            )
        };
        // The two counts, once settled, after checking that the count in all is the permits taken.
        let counted = || {
            let total = engine.shared.residents.lock().unwrap().total;
            assert_eq!(total, 20 - engine.resident_room(), "counted as the permits");
            counts()
        };
        for i in 0..3 {
            engine.submit(to("a.example", i)).await.unwrap();
        }
        let mut reservation = engine.try_reserve(2).unwrap();
        for i in 3..5 {
            engine
                .submit_reserved(to("b.example", i), &mut reservation)
                .await
                .unwrap();
        }
        assert_eq!(counted(), (3, 2));
        assert_eq!(engine.resident_room(), 15);
        // Final outcomes.
        assert_eq!(engine.fail_domain("b.example", "test").await, Some(2));
        wait_until("b.example's memory given back", || {
            engine.resident_room() == 17
        })
        .await;
        assert_eq!(counted(), (3, 0));
        // No queue takes it: its permit comes straight back.
        let unknown = engine.submit(to("c.example", 9)).await;
        assert!(
            matches!(unknown, Err(SubmitError::Unroutable { .. })),
            "{unknown:?}"
        );
        assert_eq!(engine.resident_in("c.example"), 0);
        // Parked (paused) ones the store takes back.
        assert!(engine.set_paused("a.example", true));
        wait_until("a.example's notifications taken back", || {
            engine.resident_room() == 20
        })
        .await;
        assert_eq!(counted(), (0, 0));
        assert!(engine.set_paused("a.example", false));
        // A failed task took one with it: given back; the two it held go to a new task, still counted, until their
        // final outcome.
        for i in 10..12 {
            engine.submit(to("a.example", i)).await.unwrap();
        }
        let item = Queued::new(to("a.example", 12));
        engine.shared.take_permit("a.example");
        let (binding, domain) = (
            item.notification.binding.clone(),
            item.notification.domain.clone(),
        );
        engine
            .shared
            .hand_event(
                &binding,
                &domain,
                DomainEvent::Panic(Some(item)),
                Arrival::Restored,
            )
            .await
            .unwrap();
        let stats = engine.stats("a.example").unwrap();
        wait_until("what the panic took given back", || {
            engine.resident_room() == 18
        })
        .await;
        assert_eq!(
            stats
                .task_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(counted(), (2, 0));
        assert_eq!(engine.fail_domain("a.example", "test").await, Some(2));
        wait_until("a.example's memory given back", || {
            engine.resident_room() == 20
        })
        .await;
        assert_eq!(counted(), (0, 0));
        assert_eq!(
            engine.over_share([("a.example", 1), ("b.example", 1)]),
            None
        );
    }

    /// Domains seen once each, beyond [`MAX_RETIRED_QUEUES`] (a regex domain stanza serving any recipient
    /// domain): the engine forgets the least recently used, not a paused one, and keeps the recent ones.
    #[tokio::test]
    async fn retired_queues_beyond_the_bound_are_forgotten_least_recently_used_first() {
        let engine = test_engine(Arc::new(StaticResolver::default()));
        let to = |domain: &str| {
            let mut n = notification(0);
            n.domain = Arc::from(domain);
            n
        };
        engine.count_received(&to("paused.example"));
        assert!(engine.set_paused("paused.example", true));
        engine.count_received(&to("first.example"));
        let seen = MAX_RETIRED_QUEUES + MAX_RETIRED_QUEUES / 4;
        for i in 0..seen {
            engine.count_received(&to(&format!("d{i}.example")));
        }
        let kept = engine.binding_stats_all().len();
        assert!(
            kept <= MAX_RETIRED_QUEUES + MAX_RETIRED_QUEUES / 8 + 2,
            "{kept} kept"
        );
        assert!(
            engine.stats("paused.example").is_some(),
            "a paused one is kept"
        );
        assert!(
            engine.stats("first.example").is_none(),
            "the least recently used is forgotten"
        );
        let last = engine.stats(&format!("d{}.example", seen - 1)).unwrap();
        assert_eq!(last.received.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// A domain delivered from two bindings whose queue of one binding is forgotten (beyond
    /// [`MAX_RETIRED_QUEUES`]) keeps that queue's counts in its counters while its other queue stays, so that they
    /// never go down (a metrics reader would take the drop for a restart); once both are forgotten the domain is
    /// unknown, and nothing of it is kept.
    #[tokio::test]
    async fn a_domains_counters_keep_what_a_forgotten_queue_of_it_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let engine = test_engine(Arc::new(StaticResolver::default()));
        let to = |domain: &str, binding: &str| {
            let mut n = notification(0);
            n.domain = Arc::from(domain);
            n.binding = Arc::from(binding);
            n
        };
        engine.count_received(&to("two.example", "a"));
        engine.count_received(&to("two.example", "b"));
        engine.count_received(&to("two.example", "b"));
        engine.shared.queues.lock().unwrap().values().for_each(|h| {
            h.stats.delivered(std::time::Duration::from_millis(1));
            h.stats.permanent("BadDeviceToken");
        });
        let mut fillers = 0;
        let mut fill = |until: &dyn Fn() -> bool| {
            while !until() {
                engine.count_received(&to(&format!("d{fillers}.example"), "default"));
                fillers += 1;
                assert!(fillers <= 2 * MAX_RETIRED_QUEUES, "never forgotten");
            }
        };
        let known = |binding: &str| {
            engine
                .shared
                .queues
                .lock()
                .unwrap()
                .contains_key(&QueueKey {
                    domain: Arc::from("two.example"),
                    binding: Arc::from(binding),
                })
        };
        fill(&|| !known("a"));
        assert!(known("b"), "the more recently used queue is kept");
        let stats = engine.stats("two.example").expect("the domain is kept");
        assert_eq!(stats.received.load(Relaxed), 3);
        assert_eq!(stats.delivered.load(Relaxed), 2);
        assert_eq!(stats.permanent.load(Relaxed), 2);
        assert_eq!(stats.latency_cumulative().last(), Some(&2));
        assert_eq!(
            stats.failures()[&(stats::FailureKind::Permanent, "BadDeviceToken".to_owned())],
            2
        );
        fill(&|| !known("b"));
        assert!(engine.stats("two.example").is_none());
        assert!(engine.shared.carried.lock().unwrap().is_empty());
    }

    fn limits(text: &str) -> EngineLimits {
        let config = Config::parse_str("herald.conf", text).expect("the test configuration parses");
        EngineLimits::from_config(&config)
    }

    #[test]
    fn idle_queue_timeout_is_read_in_seconds_and_zero_keeps_queues() {
        assert_eq!(
            limits("").idle_queue_timeout,
            Some(DEFAULT_IDLE_QUEUE_TIMEOUT)
        );
        assert_eq!(
            limits("idle_queue_timeout = 30\n").idle_queue_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(limits("idle_queue_timeout = 0\n").idle_queue_timeout, None);
        assert_eq!(limits("max_resident_notifications = 7\n").max_resident, 7);
        assert_eq!(
            limits("").message_expiration,
            std::time::Duration::from_secs(86400)
        );
        assert_eq!(
            limits("message_expiration = 120\n").message_expiration,
            std::time::Duration::from_secs(120)
        );
    }

    /// The console passes a domain as typed: its queues are found whatever the case (they are keyed in lower case).
    #[tokio::test]
    async fn a_domains_queues_are_found_whatever_the_case_it_is_named_in() {
        let engine = test_engine(Arc::new(StaticResolver::default()));
        engine.count_received(&notification(0));
        for typed in ["apps.example", "Apps.Example", "APPS.EXAMPLE"] {
            assert!(engine.senders_of(None, Some(typed)).is_some(), "{typed}");
            assert!(
                engine.senders_of(Some("default"), Some(typed)).is_some(),
                "{typed}"
            );
            assert!(engine.flush(typed), "{typed}");
            assert!(engine.showqueue(typed, 10, 0).await.is_some(), "{typed}");
        }
        assert!(engine.senders_of(None, Some("other.example")).is_none());
        assert!(engine.senders_of(Some("b"), Some("Apps.Example")).is_none());
    }

    /// Polls `fut` once, in the test's task.
    async fn poll_once<F: Future + ?Sized>(
        mut fut: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await
    }

    /// Counts what the outcome listener hears of notifications coming and going.
    #[derive(Default)]
    struct Arrivals {
        queued: std::sync::atomic::AtomicUsize,
        left: std::sync::atomic::AtomicUsize,
    }

    impl OutcomeListener for Arrivals {
        fn queued(&self, _: &Notification, _: u32) {
            self.queued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn outcome(&self, _: &crate::logs::OutcomeRecord<'_>) {}
        fn left(&self, _: MessageId) {
            self.left.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Arrivals {
        /// (queued, left) so far.
        fn heard(&self) -> (usize, usize) {
            use std::sync::atomic::Ordering::Relaxed;
            (self.queued.load(Relaxed), self.left.load(Relaxed))
        }
    }

    /// The first resolution of a [`GatedResolver`], held until the test lets it go.
    struct Gate {
        asked: std::sync::mpsc::Receiver<()>,
        go: std::sync::mpsc::SyncSender<()>,
    }

    impl Gate {
        /// Waits until the resolver is asked (on its blocking thread), and holds it there.
        fn wait_asked(&self) {
            self.asked
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the queue's settings were asked for");
        }
    }

    /// An engine holding at most `max` notifications, delivery held, whose first resolution of a queue's settings
    /// waits at the returned gate.
    fn gated_engine(max: usize) -> (Engine, Gate, Arc<Arrivals>) {
        let (asked_tx, asked) = std::sync::mpsc::sync_channel(1);
        let (go, go_rx) = std::sync::mpsc::sync_channel(1);
        let resolver = Arc::new(GatedResolver {
            current: Mutex::new(Ok(Arc::new(settings_to(closed_port())))),
            gate: Mutex::new(Some((asked_tx, go_rx))),
        });
        let engine = Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: max,
                ..EngineLimits::default()
            },
        );
        engine.set_held(true);
        let arrivals = Arc::new(Arrivals::default());
        engine.set_outcome_listener(arrivals.clone());
        (engine, Gate { asked, go }, arrivals)
    }

    fn received(engine: &Engine) -> u64 {
        engine
            .stats("apps.example")
            .map_or(0, |s| s.received.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A submit dropped while its queue's settings are resolved (the queue's first notification) queues nothing
    /// and keeps nothing: its memory permit is back, its domain holds nothing, nothing is counted as received, and
    /// the outcome listener hears that the notification left. The next submit goes through.
    #[tokio::test]
    async fn a_submit_dropped_while_its_queue_starts_gives_back_what_it_took() {
        let (engine, gate, arrivals) = gated_engine(4);
        {
            let mut submit = std::pin::pin!(engine.submit(notification(1)));
            assert!(poll_once(submit.as_mut()).await.is_pending());
            gate.wait_asked();
            assert_eq!(engine.resident_room(), 3, "its permit taken");
            assert_eq!(engine.resident_in("apps.example"), 1);
        }
        assert_eq!(engine.resident_room(), 4);
        assert_eq!(engine.resident_in("apps.example"), 0);
        assert_eq!(received(&engine), 0);
        assert_eq!(arrivals.heard(), (1, 1));
        gate.go.send(()).unwrap();
        engine.submit(notification(2)).await.unwrap();
        assert_eq!(engine.resident_room(), 3);
        assert_eq!(engine.resident_in("apps.example"), 1);
        assert_eq!(received(&engine), 1);
        assert_eq!(arrivals.heard(), (2, 1));
    }

    /// An outcome listener that fails as a notification arrives, and again as it leaves.
    struct FailsOnArrival;

    impl OutcomeListener for FailsOnArrival {
        fn queued(&self, _: &Notification, _: u32) {
            panic!("a listener failing on arrival");
        }
        fn outcome(&self, _: &crate::logs::OutcomeRecord<'_>) {}
        fn left(&self, _: MessageId) {
            panic!("a listener failing on leaving");
        }
    }

    /// A listener failing as a notification arrives fails that submit alone: the memory permit is given back while
    /// the panic unwinds, and the listener failing again as it is told the notification left does not abort the
    /// process (a panic during a panic would).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_failing_on_arrival_and_on_leaving_fails_only_its_submit() {
        let resolver = Arc::new(GatedResolver {
            current: Mutex::new(Ok(Arc::new(settings_to(closed_port())))),
            gate: Mutex::new(None),
        });
        let engine = Arc::new(Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 4,
                ..EngineLimits::default()
            },
        ));
        engine.set_held(true);
        engine.set_outcome_listener(Arc::new(FailsOnArrival));
        let submitting = engine.clone();
        let failed = tokio::spawn(async move { submitting.submit(notification(1)).await }).await;
        assert!(failed.is_err_and(|e| e.is_panic()));
        assert_eq!(engine.resident_room(), 4, "its permit given back");
        assert_eq!(engine.resident_in("apps.example"), 0);
    }

    /// [`Engine::restore`] dropped while its queue's settings are resolved: as a dropped submit, nothing kept.
    #[tokio::test]
    async fn a_restore_dropped_while_its_queue_starts_gives_back_what_it_took() {
        let (engine, gate, arrivals) = gated_engine(4);
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        {
            let mut restore = std::pin::pin!(engine.restore(notification(1), 2, Some(later)));
            assert!(poll_once(restore.as_mut()).await.is_pending());
            gate.wait_asked();
            assert_eq!(engine.resident_room(), 3, "its permit taken");
        }
        assert_eq!(engine.resident_room(), 4);
        assert_eq!(engine.resident_in("apps.example"), 0);
        assert_eq!(arrivals.heard(), (1, 1));
        gate.go.send(()).unwrap();
        engine
            .restore(notification(2), 2, Some(later))
            .await
            .unwrap();
        assert_eq!(engine.resident_room(), 3);
        assert_eq!(engine.resident_in("apps.example"), 1);
        assert_eq!(
            received(&engine),
            0,
            "a restored notification is not received again"
        );
        assert_eq!(arrivals.heard(), (2, 1));
    }

    /// [`Engine::submit_reserved`] dropped while its queue's settings are resolved: the room it took from the
    /// reservation goes back to the engine, and nothing else is kept.
    #[tokio::test]
    async fn a_reserved_submit_dropped_while_its_queue_starts_gives_back_what_it_took() {
        let (engine, gate, arrivals) = gated_engine(4);
        let mut reservation = engine.try_reserve(2).expect("room for two");
        {
            let mut submit =
                std::pin::pin!(engine.submit_reserved(notification(1), &mut reservation));
            assert!(poll_once(submit.as_mut()).await.is_pending());
            gate.wait_asked();
        }
        assert_eq!(reservation.len(), 1);
        assert_eq!(
            engine.resident_room(),
            3,
            "the reservation's other one held"
        );
        assert_eq!(engine.resident_in("apps.example"), 0);
        assert_eq!(arrivals.heard(), (1, 1));
        gate.go.send(()).unwrap();
        engine
            .submit_reserved(notification(2), &mut reservation)
            .await
            .unwrap();
        assert!(reservation.is_empty());
        assert_eq!(engine.resident_room(), 3);
        assert_eq!(engine.resident_in("apps.example"), 1);
        assert_eq!(received(&engine), 1);
        assert_eq!(arrivals.heard(), (2, 1));
    }

    /// [`Engine::submit`], [`Engine::restore`] and [`Engine::submit_reserved`] (its reservation used up) dropped
    /// while they wait for memory take none, whether they are dropped still waiting or with a permit granted and
    /// not yet taken; a later submit goes through.
    #[tokio::test]
    async fn calls_dropped_while_they_wait_for_memory_take_none() {
        let resolver = Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings_to(
            closed_port(),
        ))))));
        let engine = Engine::new(
            resolver,
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                max_resident: 1,
                ..EngineLimits::default()
            },
        );
        engine.set_held(true);
        let arrivals = Arc::new(Arrivals::default());
        engine.set_outcome_listener(arrivals.clone());
        let mut used_up = engine.try_reserve(0).expect("an empty reservation");
        for call in ["submit", "restore", "submit_reserved"] {
            for granted in [false, true] {
                let mut full = Some(engine.try_reserve(1).expect("the memory free"));
                {
                    let mut waiting: std::pin::Pin<
                        Box<dyn Future<Output = Result<(), SubmitError>> + '_>,
                    > = match call {
                        "submit" => Box::pin(engine.submit(notification(1))),
                        "restore" => Box::pin(engine.restore(notification(1), 1, None)),
                        _ => Box::pin(engine.submit_reserved(notification(1), &mut used_up)),
                    };
                    assert!(poll_once(waiting.as_mut()).await.is_pending(), "{call}");
                    if granted {
                        full = None;
                        assert_eq!(
                            engine.resident_room(),
                            0,
                            "{call}: granted to the waiting call"
                        );
                    }
                }
                drop(full);
                assert_eq!(engine.resident_room(), 1, "{call}, granted: {granted}");
                assert_eq!(engine.resident_in("apps.example"), 0, "{call}");
            }
        }
        assert_eq!(arrivals.heard(), (0, 0));
        engine.submit(notification(2)).await.unwrap();
        assert_eq!(engine.resident_room(), 0);
        assert_eq!(engine.resident_in("apps.example"), 1);
        assert_eq!(received(&engine), 1);
    }

    /// The PKI of a simulator that takes the client certificate of `com.example.app`.
    fn sim_pki(dir: &std::path::Path) -> herald_sim::Pki {
        herald_sim::Pki::generate(&dir.join("pki"), &["com.example.app".to_owned()]).unwrap()
    }

    /// Settings delivering `apps.example` over `protocol` to `port` (a simulator made from `pki`), with the client
    /// certificate of `pki`.
    fn sim_settings(
        pki: &herald_sim::Pki,
        protocol: crate::outbound::settings::RouteProtocol,
        port: u16,
    ) -> DeliverySettings {
        use crate::outbound::settings::RouteProtocol;
        use herald_apns::identity::{ClientIdentity, RootSource, client_config};
        let files = pki
            .client("com.example.app", herald_sim::CertVariant::Universal)
            .unwrap();
        let identity = ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap();
        let roots = RootSource::CaFile(pki.manifest.ca_cert.clone());
        let h2 = protocol == RouteProtocol::Http2;
        DeliverySettings {
            protocol,
            tls: client_config(Some(&identity), roots, h2).unwrap(),
            ..settings_to(port)
        }
    }

    /// What the spool hears of the notifications: (finished, rescheduled, abandoned).
    #[derive(Default)]
    struct SpoolCalls(Mutex<(usize, usize, usize)>);

    impl QueueObserver for SpoolCalls {
        fn finished(&self, ids: &[MessageId]) {
            self.0.lock().unwrap().0 += ids.len();
        }
        fn rescheduled(&self, _id: MessageId, _retries: u32, _next_attempt: SystemTime) {
            self.0.lock().unwrap().1 += 1;
        }
        fn abandoned(&self, ids: &[MessageId], _hold: std::time::Duration) -> bool {
            self.0.lock().unwrap().2 += ids.len();
            false
        }
    }

    /// The tokens the simulator recorded, sorted.
    fn recorded_tokens(sim: &herald_sim::SimHandle) -> Vec<String> {
        let mut tokens: Vec<String> = sim.record().into_iter().map(|r| r.token).collect();
        tokens.sort();
        tokens
    }

    /// Delivery held (`apn { enabled = false }`) while notifications wait in the pool for a connection that cannot
    /// be opened (nothing listens on the route; `mx_failures_to_delay = 0`, so the queue is never delayed): they
    /// come back to the queue at once, the pool stops trying to connect, and nothing reaches APNs once it listens,
    /// until the hold is lifted; then each is delivered once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_takes_back_what_waits_for_a_connection_and_sends_it_only_once_lifted() {
        use std::sync::atomic::Ordering;
        const N: u8 = 5;
        let dir = tempfile::tempdir().unwrap();
        let pki = sim_pki(dir.path());
        let port = closed_port();
        let mut settings =
            sim_settings(&pki, crate::outbound::settings::RouteProtocol::Http2, port);
        settings.mx_failures_to_delay = 0;
        let engine = test_engine(Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings))))));
        for i in 0..N {
            engine.submit(notification(i)).await.unwrap();
        }
        let stats = engine.stats("apps.example").unwrap();
        wait_until("every notification handed to the pool", || {
            stats.dispatched.load(Ordering::Relaxed) == usize::from(N)
        })
        .await;
        engine.set_held(true);
        wait_until("what waits for a connection taken back by the hold", || {
            stats.dispatched.load(Ordering::Relaxed) == 0
        })
        .await;
        let queued = engine.showqueue("apps.example", 100, 0).await.unwrap();
        assert_eq!(queued.len(), usize::from(N));
        assert!(queued.iter().all(|e| e.queue == "active" && e.retries == 0));
        // The simulator now listens on the route; the held queue takes many more looks (one every 50 ms while it
        // holds notifications), long enough for a pool still trying to connect to reach it.
        let mut config = herald_sim::SimConfig::from_pki(&pki.manifest).unwrap();
        config.h2_port = port;
        let sim = herald_sim::Simulator::start(config).await.unwrap();
        let looks = stats.looks.load(Ordering::Relaxed);
        wait_until("the held queue looked at its pool again", || {
            stats.looks.load(Ordering::Relaxed) >= looks + 20
        })
        .await;
        let counters = sim.counters();
        assert_eq!(
            counters.h2_connections.total.load(Ordering::Relaxed),
            0,
            "the pool of a held queue connected"
        );
        assert_eq!(counters.streams_total.load(Ordering::Relaxed), 0);
        engine.set_held(false);
        wait_until(
            "every notification delivered once the hold is lifted",
            || stats.delivered.load(Ordering::Relaxed) == u64::from(N),
        )
        .await;
        let expected: Vec<String> = (0..N).map(|i| format!("{i:02x}").repeat(32)).collect();
        assert_eq!(
            recorded_tokens(&sim),
            expected,
            "each notification delivered once"
        );
    }

    /// Delivery held while a backlog goes out to a slow server over `protocol`: only what the connection had
    /// taken (its streams, or its binary window) is still sent, as after a pause; what waited in the pool comes
    /// back to the queue; once the hold is lifted the rest goes out, each notification once.
    async fn a_hold_sends_nothing_beyond_what_the_connections_took(
        protocol: crate::outbound::settings::RouteProtocol,
    ) {
        use crate::outbound::settings::RouteProtocol;
        use std::sync::atomic::Ordering;
        const N: u8 = 40;
        // HTTP/2: two streams, each answered after 200 ms. Binary: a window of one notification, settled by 100 ms
        // of silence.
        const TAKEN: u64 = 2;
        // What may still go out after the hold: what the connection had taken, and what it takes in the rounds
        // before the queue acts on the hold (a loaded machine may take a few hundred milliseconds to run it).
        const SLACK: u64 = 4 * TAKEN;
        let dir = tempfile::tempdir().unwrap();
        let pki = sim_pki(dir.path());
        let mut config = herald_sim::SimConfig::from_pki(&pki.manifest).unwrap();
        config.max_concurrent_streams = TAKEN as u32;
        config.scenario.latency_ms = 200;
        let sim = herald_sim::Simulator::start(config).await.unwrap();
        let counters = sim.counters();
        let (port, sent): (u16, &std::sync::atomic::AtomicU64) = match protocol {
            RouteProtocol::Http2 => (sim.addrs.h2.port(), &counters.streams_total),
            RouteProtocol::Binary(_) => (sim.addrs.binary.port(), &counters.accepted_binary),
        };
        let mut settings = sim_settings(&pki, protocol, port);
        // HTTP/2: answers come in time; binary: 100 ms of silence settles what was written.
        settings.response_timeout = match protocol {
            RouteProtocol::Http2 => std::time::Duration::from_secs(5),
            RouteProtocol::Binary(_) => std::time::Duration::from_millis(100),
        };
        let engine = test_engine(Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings))))));
        let spool = Arc::new(SpoolCalls::default());
        assert!(engine.set_observer(spool.clone()));
        for i in 0..N {
            engine.submit(notification(i)).await.unwrap();
        }
        let stats = engine.stats("apps.example").unwrap();
        wait_until("delivery started", || sent.load(Ordering::Relaxed) >= 1).await;
        engine.set_held(true);
        let sent_at_hold = sent.load(Ordering::Relaxed);
        wait_until("the held queue stopped sending", || {
            stats.dispatched.load(Ordering::Relaxed) == 0
        })
        .await;
        let sent_held = sent.load(Ordering::Relaxed);
        assert!(
            sent_held <= sent_at_hold + SLACK,
            "{sent_held} sent, {sent_at_hold} when held with at most {TAKEN} taken by the connection"
        );
        let finished = stats.finished();
        assert!(finished < u64::from(N));
        let queued = engine.showqueue("apps.example", 100, 0).await.unwrap();
        assert_eq!(queued.len() as u64, u64::from(N) - finished);
        assert_eq!(
            spool.0.lock().unwrap().0 as u64,
            finished,
            "only final outcomes told"
        );
        engine.set_held(false);
        wait_until(
            "every notification delivered once the hold is lifted",
            || stats.delivered.load(Ordering::Relaxed) == u64::from(N),
        )
        .await;
        let expected: Vec<String> = (0..N).map(|i| format!("{i:02x}").repeat(32)).collect();
        assert_eq!(
            recorded_tokens(&sim),
            expected,
            "each notification delivered once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_sends_nothing_beyond_the_streams_taken_over_http2() {
        a_hold_sends_nothing_beyond_what_the_connections_took(
            crate::outbound::settings::RouteProtocol::Http2,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_sends_nothing_beyond_the_window_taken_over_binary() {
        a_hold_sends_nothing_beyond_what_the_connections_took(
            crate::outbound::settings::RouteProtocol::Binary(
                herald_apns::binary::BinaryFormat::Frame,
            ),
        )
        .await;
    }

    /// A stop holds delivery and waits for what is counted as dispatched (`Server::shutdown`): a notification
    /// waiting for a connection that cannot be opened is not on its way to APNs, so the hold takes it back at once
    /// and it is no longer counted; the spool hears nothing of it (it keeps it for the next start), and it is not
    /// charged an attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stops_hold_leaves_dispatched_only_what_a_connection_took() {
        use std::sync::atomic::Ordering;
        let mut settings = settings_to(closed_port());
        settings.mx_failures_to_delay = 0;
        let engine = test_engine(Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings))))));
        let spool = Arc::new(SpoolCalls::default());
        assert!(engine.set_observer(spool.clone()));
        engine.submit(notification(1)).await.unwrap();
        let stats = engine.stats("apps.example").unwrap();
        wait_until("the notification handed to the pool", || {
            stats.dispatched.load(Ordering::Relaxed) == 1
        })
        .await;
        engine.set_held(true);
        wait_until("the notification no longer counted as on its way", || {
            stats.dispatched.load(Ordering::Relaxed) == 0
        })
        .await;
        let queued = engine.showqueue("apps.example", 10, 0).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].queue, queued[0].retries), ("active", 0));
        assert_eq!(
            *spool.0.lock().unwrap(),
            (0, 0, 0),
            "the spool was told of it"
        );
        assert_eq!(stats.finished(), 0);
    }

    /// What the outcome listener heard of one notification (numbered by the byte its token is made of).
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Heard {
        Queued(u8),
        InFlight(u8),
        /// Its kind, error, retries, and whether it reached a connection.
        Outcome(u8, crate::logs::OutcomeKind, String, u32, bool),
    }

    /// An outcome listener that keeps what it hears, in order.
    #[derive(Default)]
    struct HeardAll(Mutex<Vec<Heard>>);

    impl HeardAll {
        /// The notification an id was given to (see [`deliver_through_one_stream`]).
        fn number(id: MessageId) -> u8 {
            u8::try_from(id.0 - 1).unwrap()
        }

        fn push(&self, heard: Heard) {
            self.0.lock().unwrap().push(heard);
        }
    }

    impl OutcomeListener for HeardAll {
        fn queued(&self, n: &Notification, _retries: u32) {
            self.push(Heard::Queued(Self::number(n.id)));
        }
        fn in_flight(&self, id: MessageId) {
            self.push(Heard::InFlight(Self::number(id)));
        }
        fn outcome(&self, r: &crate::logs::OutcomeRecord<'_>) {
            self.push(Heard::Outcome(
                Self::number(r.notification.id),
                r.kind,
                r.error.to_owned(),
                r.retries,
                r.connected,
            ));
        }
    }

    /// Submits notifications `0..expirations.len()`, in order, each with its APNs expiration (`None`: the default
    /// `apn_expiry`), to a simulator that allows one stream per connection and answers each notification after
    /// `latency_ms`, over at most one connection: the others wait in the pool for the stream. Once every one has its
    /// final outcome, returns what the outcome listener heard and the tokens the simulator received, in order.
    async fn deliver_through_one_stream(
        latency_ms: u64,
        expirations: &[Option<u32>],
    ) -> (Vec<Heard>, Vec<String>) {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let pki = sim_pki(dir.path());
        let mut config = herald_sim::SimConfig::from_pki(&pki.manifest).unwrap();
        config.max_concurrent_streams = 1;
        config.scenario.latency_ms = latency_ms;
        let sim = herald_sim::Simulator::start(config).await.unwrap();
        let mut settings = sim_settings(
            &pki,
            crate::outbound::settings::RouteProtocol::Http2,
            sim.addrs.h2.port(),
        );
        settings.max_connections = 1;
        settings.response_timeout = std::time::Duration::from_secs(30);
        let engine = test_engine(Arc::new(SwitchResolver(Mutex::new(Ok(Arc::new(settings))))));
        let heard = Arc::new(HeardAll::default());
        assert!(engine.set_outcome_listener(heard.clone()));
        for (i, expiration) in expirations.iter().enumerate() {
            let i = u8::try_from(i).unwrap();
            let mut n = notification(i);
            n.id = MessageId(u128::from(i) + 1);
            n.push.expiration = *expiration;
            engine.submit(n).await.unwrap();
        }
        let stats = engine.stats("apps.example").unwrap();
        wait_until("every notification finished", || {
            stats.finished() == expirations.len() as u64
        })
        .await;
        assert_eq!(stats.dispatched.load(Ordering::Relaxed), 0);
        let heard = heard.0.lock().unwrap().clone();
        let sent = sim.record().into_iter().map(|r| r.token).collect();
        (heard, sent)
    }

    /// The token of notification `i` (see [`notification`]).
    fn token_of(i: u8) -> String {
        format!("{i:02x}").repeat(32)
    }

    /// What each notification's outcome was, by number: `Some(error)` for a permanent failure without an attempt
    /// (retries 0, no connection), `None` for delivered. Checks that each was queued once, handed to the pool once
    /// (so it was not refused at dispatch: it expired while it waited there, and its status did not change while it
    /// did), and had one outcome.
    fn outcomes(heard: &[Heard], n: u8) -> Vec<Option<String>> {
        use crate::logs::OutcomeKind;
        (0..n)
            .map(|i| {
                let of: Vec<&Heard> = heard
                    .iter()
                    .filter(|h| {
                        matches!(h, Heard::Queued(j) | Heard::InFlight(j) | Heard::Outcome(j, ..)
                            if *j == i)
                    })
                    .collect();
                match of.as_slice() {
                    [
                        Heard::Queued(_),
                        Heard::InFlight(_),
                        Heard::Outcome(_, kind, error, 0, connected),
                    ] => match kind {
                        OutcomeKind::Delivered => {
                            assert!(*connected, "{i}: {of:?}");
                            None
                        }
                        OutcomeKind::Permanent => {
                            assert!(!*connected, "{i}: {of:?}");
                            Some(error.clone())
                        }
                        _ => panic!("{i}: {of:?}"),
                    },
                    _ => panic!("notification {i}: {of:?}"),
                }
            })
            .collect()
    }

    const EXPIRED: &str = "Delivery not attempted (APNs expiration passed)";

    /// Notifications waiting in the pool for a free stream (the one stream the server allows is taken by a
    /// notification it answers only after 5 s) whose APNs expiration passes meanwhile fail as they would have at
    /// dispatch, without an attempt, and never reach APNs: the header's date bounds how long APNs may store a
    /// notification (/work/shared/reference/apns.md §3.2; docs/apns-protocol.md#classification).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notifications_whose_expiration_passes_while_they_wait_for_a_stream_fail_unsent() {
        const N: u8 = 5;
        let expiration = u32::try_from(message::unix_now() + 1).unwrap();
        let (heard, sent) = deliver_through_one_stream(5000, &[Some(expiration); N as usize]).await;
        let outcomes = outcomes(&heard, N);
        // The first one is on the stream if the connection opened before its expiration; none other can be.
        let delivered: Vec<String> = (0..N)
            .filter(|&i| outcomes[usize::from(i)].is_none())
            .map(token_of)
            .collect();
        assert!(delivered.len() <= 1, "{outcomes:?}");
        assert_eq!(sent, delivered, "only what was delivered reached APNs");
        assert!(
            outcomes.iter().flatten().all(|e| e == EXPIRED),
            "{outcomes:?}"
        );
    }

    /// Streams freeing one at a time (one stream, answers after 1 s): of the notifications waiting in the pool,
    /// those whose APNs expiration passed fail without an attempt once it passed; the others go out, all in the
    /// order they were submitted, each handed to the pool once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_expired_of_what_waits_for_a_stream_fail_and_the_rest_keeps_its_order() {
        const N: u8 = 12;
        let soon = u32::try_from(message::unix_now() + 2).unwrap();
        // Even ones expire in 2 s; odd ones have the default `apn_expiry`.
        let expirations: Vec<Option<u32>> = (0..N).map(|i| (i % 2 == 0).then_some(soon)).collect();
        let (heard, sent) = deliver_through_one_stream(1000, &expirations).await;
        let outcomes = outcomes(&heard, N);
        let delivered: Vec<String> = (0..N)
            .filter(|&i| outcomes[usize::from(i)].is_none())
            .map(token_of)
            .collect();
        assert_eq!(sent, delivered, "delivered in the order submitted");
        assert!(
            (0..N)
                .filter(|i| i % 2 == 1)
                .all(|i| outcomes[usize::from(i)].is_none()),
            "{outcomes:?}"
        );
        let failed = outcomes.iter().flatten().count();
        assert!(failed >= 1, "{outcomes:?}");
        assert!(
            outcomes.iter().flatten().all(|e| e == EXPIRED),
            "{outcomes:?}"
        );
    }
}
