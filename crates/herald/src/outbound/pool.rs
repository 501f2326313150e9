//! The pool of connections of one (binding, domain) (docs/momentum-compat.md#outbound-connections,
//! docs/architecture.md#outbound).
//!
//! Connections open on demand: the first when work arrives, others while the work waiting is more than the open
//! ones could carry at the server's stream limits and each of them needs help: it carries all the server allows
//! (saturated), or uses all of an adaptive limit that is still ramping up with fast answers (a full round of them, and
//! none slow: a server that queues requests answers the first of a round at once). A connection held back by its
//! adaptive limit because answers are slow does neither, so slowness never opens connections; one the server has not
//! answered yet (one stream until the provider token got through) waits for its answer. Never more than
//! `max_outbound_connections` taking work (counting those being opened; a draining connection, which only finishes
//! what it carries, is not counted), several at once when the backlog asks for them; a
//! further HTTP/2 connection starts its adaptive limit at the level the open ones reached rather than ramping up
//! from the start. They all pull from
//! one queue, so work spreads over whichever has room. A connection closes itself after `idle_timeout`, on an
//! exception, or (binary) after an error packet; a binary connection whose write waits longer than
//! `delivery_response_timeout` (the server stopped reading) drains, so work waiting gets a new connection, and
//! closes at its write timeout ([`legacy::write_timeout_for`]). Failed connection attempts back off exponentially;
//! after `mx_failures_to_delay` of them in a row the pool says so, and the domain's queue is delayed instead of spun
//! on. A connection that opens but stops taking work through a fault within its first [`PROBATION`], before APNs
//! has accepted a notification on it, is such a failed attempt too: on HTTP/2 a GOAWAY right after its SETTINGS,
//! `ExpiredProviderToken` for a token the host's clock thinks young, `503 Shutdown`,
//! `429 TooManyProviderTokenUpdates`, streams reset one after another; on the binary protocol a
//! connection closed before any answer (a certificate for the other environment is refused right after the TLS
//! handshake), a transient error packet before anything was processed, a stalled write. A GOAWAY that covers streams
//! in flight leaves them to be answered, and the connection is judged only once they have ended: an accepted one
//! among them proves it. Opening alone does not end a run of failures, so a server that takes connections and
//! refuses all work on them gets backoff, not a reconnect per notification. A notification answered `503 Shutdown` or `429 TooManyProviderTokenUpdates` (answers
//! about the connection, which takes no more work after them) comes back unsent once, for another connection
//! ([`HandBackOnce`]).
//! When a `host` stanza caps the route's host, every connection also takes a slot of that host's budget, shared
//! with every other pool routed there ([`super::hosts`]); a pool whose host has all it may have waits for a slot,
//! and while a lowered cap leaves the host over it, pools drain their newest connections.
//!
//! The pool is owned by its domain's task and is not shared: no locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_apns::client::{
    ConnectionError, ConnectionInfo, ConnectionState, Job, JobReceiver, JobSender, NotSentReason,
    OutcomeSink, PushResult, Rejection, catch_panic, http2, legacy,
};

use super::hosts::{HostSlot, HostWaiter};
use super::settings::{DeliverySettings, RouteProtocol};
use crate::model::message::Queued;

/// Work waiting for a connection beyond what open connections can carry, so that saturation is visible.
const BACKLOG: usize = 256;
/// First and longest pause between failed connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A new connection's first seconds (HTTP/2 or binary): one that stops taking work through a fault of the server or
/// the network ([`ConnectionState::fault`]) within this long of opening, before APNs has accepted a notification on
/// it, counts as a failed connection attempt (backoff, `mx_failures_to_delay`); the run of failed attempts ends
/// only with a connection that carried an accepted notification or lived this long
/// (docs/apns-protocol.md#http2-connection, docs/apns-protocol.md#binary-error-packet).
pub const PROBATION: Duration = Duration::from_secs(10);

/// Numbers connections across the whole process, for logs.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub type PoolJob = Job<Box<Queued>>;

/// The result of one connection attempt, reported back to the pool's owner.
pub type ConnectResult = Result<Arc<ConnectionState>, ConnectionError>;

/// What the pool needs from its owner: where results go, and how to hear back about connection attempts.
pub trait PoolEvents: Send + Sync + 'static {
    fn connected(&self, generation: u64, result: ConnectResult);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Opened,
    /// The attempt failed; `delay_domain` is true when `mx_failures_to_delay` consecutive attempts have failed.
    Failed {
        delay_domain: bool,
    },
    /// A report from a pool generation that was replaced (after a reload); ignored.
    Stale,
}

pub struct Pool {
    settings: Arc<DeliverySettings>,
    generation: u64,
    jobs_tx: JobSender<Box<Queued>>,
    jobs_rx: JobReceiver<Box<Queued>>,
    connections: Vec<Arc<ConnectionState>>,
    connecting: usize,
    /// The host budget's slots of open connections (when the host is capped), dropped once they have closed.
    slots: Vec<(Arc<ConnectionState>, HostSlot)>,
    /// Slots taken for attempts under way.
    connecting_slots: Vec<HostSlot>,
    /// Present while work waits for a slot of the host's budget.
    host_waiter: Option<HostWaiter>,
    consecutive_failures: u32,
    next_attempt: Instant,
    /// Connections opened and not yet judged: their attempt succeeded once they carry an accepted notification or
    /// live [`PROBATION`], and failed if they stop on a fault sooner.
    young: Vec<Arc<ConnectionState>>,
    /// Young connections' faults reached `mx_failures_to_delay`: the report the pool sent its owner (see
    /// [`Pool::on_connected`]) delays the domain.
    delay_due: bool,
    last_error: Option<String>,
    sink: Arc<dyn OutcomeSink<Box<Queued>>>,
    events: Arc<dyn PoolEvents>,
    h2: Arc<http2::Http2Options>,
    binary: Arc<legacy::BinaryOptions>,
    opened_total: u64,
    /// Makes the next connection attempt panic (tests of what follows a panic).
    #[cfg(test)]
    connect_panics: bool,
}

impl Pool {
    pub fn new(
        settings: Arc<DeliverySettings>,
        generation: u64,
        sink: Arc<dyn OutcomeSink<Box<Queued>>>,
        events: Arc<dyn PoolEvents>,
    ) -> Self {
        let (jobs_tx, jobs_rx) = async_channel::unbounded();
        let sink: Arc<dyn OutcomeSink<Box<Queued>>> = Arc::new(HandBackOnce { inner: sink });
        let h2 = Arc::new(http2::Http2Options {
            endpoint: settings.endpoint.clone(),
            tls: settings.tls.clone(),
            auth: settings.auth.clone(),
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
            idle_timeout: settings.idle_timeout,
            keepalive: settings.keepalive,
        });
        let format = match settings.protocol {
            RouteProtocol::Binary(f) => f,
            RouteProtocol::Http2 => herald_apns::binary::BinaryFormat::Frame,
        };
        let binary = Arc::new(legacy::BinaryOptions {
            endpoint: settings.endpoint.clone(),
            tls: settings.tls.clone(),
            format,
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
            write_timeout: legacy::write_timeout_for(settings.response_timeout),
            idle_timeout: settings.idle_timeout,
            max_window: settings.max_window,
        });
        Pool {
            settings,
            generation,
            jobs_tx,
            jobs_rx,
            connections: Vec::new(),
            connecting: 0,
            slots: Vec::new(),
            connecting_slots: Vec::new(),
            host_waiter: None,
            consecutive_failures: 0,
            next_attempt: Instant::now(),
            young: Vec::new(),
            delay_due: false,
            last_error: None,
            sink,
            events,
            h2,
            binary,
            opened_total: 0,
            #[cfg(test)]
            connect_panics: false,
        }
    }

    pub fn settings(&self) -> &Arc<DeliverySettings> {
        &self.settings
    }

    /// Takes new settings that keep the connections (see [`DeliverySettings::same_connections`]; otherwise the
    /// owner replaces the pool). A lower connection limit drains the newest connections beyond it: they finish
    /// what they carry and close.
    pub fn reconfigure(&mut self, settings: Arc<DeliverySettings>) {
        debug_assert!(self.settings.same_connections(&settings));
        self.settings = settings;
        self.connections.retain(|c| !c.is_closed());
        let max = self.settings.max_connections.max(1);
        let mut serving =
            self.connections.iter().filter(|c| !c.is_draining()).count() + self.connecting;
        for c in self.connections.iter().rev() {
            if serving <= max {
                break;
            }
            if !c.is_draining() {
                c.drain();
                serving -= 1;
            }
        }
        self.prune();
    }

    /// Forgets closed connections, giving their host slots back, and marks the slots of draining ones; judges
    /// the young connections (see [`PROBATION`]).
    pub fn prune(&mut self) {
        self.judge_young();
        self.connections.retain(|c| !c.is_closed());
        self.slots.retain(|(c, _)| !c.is_closed());
        for (c, slot) in &mut self.slots {
            if c.is_draining() {
                slot.set_draining();
            }
        }
    }

    /// Settles the attempts of young connections: one that carried an accepted notification, or lived
    /// [`PROBATION`], ends the run of failed attempts; one that stopped on a fault sooner is a failed attempt. A
    /// GOAWAY that covers streams in flight leaves them to be answered, and an accepted one proves the connection:
    /// such a connection is judged once it has closed, all its streams ended.
    fn judge_young(&mut self) {
        let mut i = 0;
        while i < self.young.len() {
            let c = &self.young[i];
            // Read first: all a closed connection did (its answers, its fault) is seen after it.
            let closed = c.is_closed();
            let fault = c.fault();
            let failed = match &fault {
                _ if c.is_proven() => Some(false),
                // Read after the fault, which it is set before: never behind it.
                Some(_) if c.awaits_covered_answers() && !closed => {
                    i += 1;
                    continue;
                }
                Some((after, _)) => Some(*after < PROBATION),
                // Closed without a fault (idle, drained by the pool): it says nothing either way.
                None if closed => None,
                None if c.age() >= PROBATION => Some(false),
                None => {
                    i += 1;
                    continue;
                }
            };
            self.young.swap_remove(i);
            match (failed, fault) {
                (Some(false), _) => self.consecutive_failures = 0,
                (Some(true), Some((after, cause))) => {
                    let error = ConnectionError::EndedEarly {
                        after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                        cause,
                    };
                    self.attempt_failed(&error);
                }
                _ => {}
            }
        }
    }

    /// Counts a failed connection attempt: the next one waits (exponential backoff), and `mx_failures_to_delay` of
    /// them in a row with no connection taking work make the pool ask for the domain to be delayed (its return; for
    /// a young connection's fault, [`ConnectionError::EndedEarly`], through a report to the owner, see
    /// [`Pool::on_connected`]).
    fn attempt_failed(&mut self, error: &ConnectionError) -> bool {
        let young = matches!(error, ConnectionError::EndedEarly { .. });
        self.consecutive_failures += 1;
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << self.consecutive_failures.min(16).saturating_sub(1))
            .min(BACKOFF_MAX);
        self.next_attempt = Instant::now() + backoff;
        tracing::warn!(domain = %self.settings.domain, endpoint = %self.settings.endpoint,
            failures = self.consecutive_failures, "connection failed: {error}");
        self.last_error = Some(error.to_string());
        let limit = self.settings.mx_failures_to_delay;
        let delay_domain = limit > 0
            && self.consecutive_failures >= limit
            && if young {
                self.serving() == 0
            } else {
                self.connections.is_empty()
            };
        if delay_domain {
            self.consecutive_failures = 0;
            // A young connection's failure is no attempt the owner waits on: it hears that the domain is to be
            // delayed from a report the pool sends itself (the warning above is the failure's log line).
            if let ConnectionError::EndedEarly { after_ms, cause } = error
                && !self.jobs_tx.is_closed()
            {
                self.delay_due = true;
                let report = ConnectionError::EndedEarly {
                    after_ms: *after_ms,
                    cause: cause.clone(),
                };
                self.events.connected(self.generation, Err(report));
            }
        }
        delay_domain
    }

    /// While the host has more serving connections than its cap (a reload lowered it), drains this pool's
    /// newest ones; while other pools wait for a slot, closes an idle one (nothing in flight, nothing waiting),
    /// so that a pool's idle connections never keep the host from another pool with work.
    fn drain_host_excess(&mut self) {
        let Some(budget) = self.settings.host_budget.clone() else {
            return;
        };
        for (c, slot) in self.slots.iter_mut().rev() {
            if budget.excess() == 0 {
                break;
            }
            if !c.is_draining() {
                c.drain();
                slot.set_draining();
            }
        }
        if self.host_waiter.is_none()
            && self.jobs_rx.is_empty()
            && budget.has_unserved_waiters()
            && let Some((c, slot)) = self
                .slots
                .iter_mut()
                .rev()
                .find(|(c, _)| !c.is_draining() && c.in_flight() == 0)
        {
            c.drain();
            slot.set_draining();
        }
    }

    /// Hands a job to the connections.
    pub fn submit(&mut self, job: PoolJob) {
        if let Err(e) = self.jobs_tx.try_send(job) {
            // Unbounded and never closed while the pool lives; should it happen, the job comes back unsent.
            let job = e.into_inner();
            let info = herald_apns::client::ConnectionInfo {
                remote: ([0, 0, 0, 0], 0).into(),
                id: 0,
            };
            self.sink.report(
                job.tag,
                herald_apns::client::PushResult::NotSent(
                    herald_apns::client::NotSentReason::Closing,
                ),
                &info,
            );
        }
    }

    /// Jobs handed over and not yet taken by a connection.
    pub fn waiting(&self) -> usize {
        self.jobs_rx.len()
    }

    /// How many jobs may be outstanding (handed over and not yet reported) before the queue should hold back:
    /// what the open connections' in-flight limits allow, plus a small backlog. When APNs slows down the limits
    /// fall, and the rest waits in the domain's queue.
    pub fn dispatch_limit(&self) -> usize {
        // Saturating: a connection's limit is `usize::MAX` for a moment against a server that sets none.
        let open = self
            .connections
            .iter()
            .filter(|c| !c.is_closed())
            .fold(0usize, |sum, c| sum.saturating_add(c.limit()));
        open.saturating_add(BACKLOG)
    }

    /// Streams in flight and the sum of the in-flight limits, over the open connections.
    pub fn streams(&self) -> (usize, usize) {
        self.connections
            .iter()
            .filter(|c| !c.is_closed())
            .fold((0usize, 0usize), |(f, l), c| {
                (f.saturating_add(c.in_flight()), l.saturating_add(c.limit()))
            })
    }

    /// Connections open or being opened.
    pub fn open_connections(&self) -> usize {
        self.connections.iter().filter(|c| !c.is_closed()).count() + self.connecting
    }

    /// The generation this pool was made for (see [`Pool::on_connected`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the pool still has connections open or being opened (a closed pool is kept until it has none).
    pub fn is_active(&self) -> bool {
        self.connecting > 0 || self.connections.iter().any(|c| !c.is_closed())
    }

    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Drops closed connections and opens more while work waits beyond what the open ones could carry (see
    /// [`Pool::room_to_grow`]); `queued` is the work ready in the domain's queue, not yet handed over.
    pub fn maintain(&mut self, queued: usize) {
        self.prune();
        self.drain_host_excess();
        let waiting = self.jobs_rx.len();
        if waiting == 0 {
            self.host_waiter = None;
            return;
        }
        let max = self.settings.max_connections.max(1);
        // A draining connection (a reload, an idle host slot, a connection that stopped taking work: a peer gone
        // silent, a GOAWAY, an expired provider token) finishes what it carries but takes nothing new, so it does
        // not count against the limit: work waiting gets a new connection now rather than when it has closed.
        while self.serving() + self.connecting < max && Instant::now() >= self.next_attempt {
            match self.room_to_grow() {
                Some(room) if waiting + queued > room => {}
                _ => return,
            }
            if !self.open_one() {
                return;
            }
        }
    }

    /// Open connections that still take work (not draining).
    fn serving(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| !c.is_closed() && !c.is_draining())
            .count()
    }

    /// How much more work the open connections could take on at the servers' stream limits, counting each attempt
    /// under way as one more like them; `None` while one of them cannot show yet that it needs help: the server has
    /// not answered it yet (APNs allows one stream until a provider token got through), or it does not use all of
    /// its limit, or its limit is held back by slow answers, or its ramp up has not yet had a full round of fast
    /// answers or has had a slow one (a server that queues requests first in first out answers the first of a round
    /// at once and the others later: connections opened then would queue behind it). So slowness never opens
    /// connections, a connection still ramping up with fast answers does when the work waiting is more than it will
    /// ever carry, and a burst that one connection will take on soon opens no other.
    fn room_to_grow(&self) -> Option<usize> {
        room_to_grow(
            self.connections
                .iter()
                .filter(|c| !c.is_draining())
                .map(|c| Load {
                    needs_help: c.is_saturated() || c.is_ramping_up(),
                    capacity: c.capacity(),
                    in_flight: c.in_flight(),
                }),
            self.connecting,
        )
    }

    /// Starts one connection attempt; false when the host's budget has no slot for it.
    fn open_one(&mut self) -> bool {
        if let Some(budget) = &self.settings.host_budget {
            let Some(slot) = budget.try_take() else {
                // The host has all the connections its cap allows: wait for one of any pool to close. A pool
                // without a connection is waited for (others close idle ones); one that has connections is
                // served by them.
                if self.connections.is_empty() && self.host_waiter.is_none() {
                    self.host_waiter = Some(HostWaiter::new(budget));
                }
                return false;
            };
            self.host_waiter = None;
            self.connecting_slots.push(slot);
        }
        self.connecting += 1;
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation;
        let events = self.events.clone();
        let jobs = self.jobs_rx.clone();
        let sink = self.sink.clone();
        let domain = self.settings.domain.clone();
        let host = self.settings.endpoint.host.clone();
        #[cfg(test)]
        let panics = std::mem::take(&mut self.connect_panics);
        match self.settings.protocol {
            RouteProtocol::Http2 => {
                let opts = self.h2.clone();
                // The open connections carry all the server allows or ramp up with fast answers: the new one
                // starts at the level they reached instead of ramping up from the start.
                let proven = self
                    .connections
                    .iter()
                    .filter(|c| !c.is_draining())
                    .map(|c| c.limit())
                    .min();
                tokio::spawn(async move {
                    let opened = catch_panic(async {
                        #[cfg(test)]
                        if panics {
                            panic!("a test made the connection attempt panic");
                        }
                        http2::open_starting_at(opts, id, jobs, sink, proven).await
                    })
                    .await;
                    events.connected(generation, attempted(opened, &domain, host));
                });
            }
            RouteProtocol::Binary(_) => {
                let opts = self.binary.clone();
                tokio::spawn(async move {
                    let opened = catch_panic(async {
                        #[cfg(test)]
                        if panics {
                            panic!("a test made the connection attempt panic");
                        }
                        legacy::open(opts, id, jobs, sink).await
                    })
                    .await;
                    events.connected(generation, attempted(opened, &domain, host));
                });
            }
        }
        true
    }

    /// Records the end of a connection attempt. A failed young connection's report (a
    /// [`ConnectionError::EndedEarly`] the pool sent itself, once such failures reach `mx_failures_to_delay`) is
    /// no attempt under way: it only says that the domain is to be delayed.
    pub fn on_connected(&mut self, generation: u64, result: ConnectResult) -> ConnectOutcome {
        if generation != self.generation {
            if let Ok(state) = result {
                state.drain();
            }
            return ConnectOutcome::Stale;
        }
        if let Err(ConnectionError::EndedEarly { .. }) = &result {
            return ConnectOutcome::Failed {
                delay_domain: std::mem::take(&mut self.delay_due),
            };
        }
        self.connecting = self.connecting.saturating_sub(1);
        // The attempt's host slot: kept by the connection it opened, given back if it failed.
        let slot = self.connecting_slots.pop();
        if let (Ok(state), Some(slot)) = (&result, slot) {
            self.slots.push((state.clone(), slot));
        }
        match result {
            Ok(state) if self.jobs_tx.is_closed() => {
                // Opened after the pool was closed (replaced by a reload): nothing to carry, close it.
                state.drain();
                self.connections.push(state);
                ConnectOutcome::Stale
            }
            Ok(state) => {
                // Open is not yet proof that the server takes work: see `judge_young`.
                self.young.push(state.clone());
                self.next_attempt = Instant::now();
                self.opened_total += 1;
                self.connections.push(state);
                ConnectOutcome::Opened
            }
            Err(e) => {
                let delay_domain = self.attempt_failed(&e);
                ConnectOutcome::Failed { delay_domain }
            }
        }
    }

    /// Takes back every job no connection has taken yet (to delay them).
    pub fn take_waiting(&mut self) -> Vec<PoolJob> {
        let mut jobs = Vec::with_capacity(self.jobs_rx.len());
        while let Ok(job) = self.jobs_rx.try_recv() {
            jobs.push(job);
        }
        jobs
    }

    /// Asks every connection to finish what it carries and close; new work waits for new connections.
    pub fn drain(&mut self) {
        for c in &self.connections {
            c.drain();
        }
        self.prune();
    }

    /// Closes the queue: connections finish what they carry, hand back nothing new, and close.
    pub fn close(&self) {
        self.jobs_tx.close();
        for c in &self.connections {
            c.drain();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

/// The result of a connection attempt whose task caught a panic of its work (`Err` with the panic's message): a
/// panic is logged at error level and is a failed attempt ([`ConnectionError::Panicked`]), so the pool always hears
/// back about an attempt, no longer counts it as under way, gives its host slot back, and backs off before the next.
fn attempted(opened: Result<ConnectResult, String>, domain: &str, host: String) -> ConnectResult {
    opened.unwrap_or_else(|message| {
        tracing::error!(%domain, %host, "a connection attempt panicked: {message}");
        Err(ConnectionError::Panicked { host, message })
    })
}

/// The answers that refuse a notification for the state of the connection that carried it, not for anything in
/// the notification, and after which that connection takes no more work (`herald_apns::client::http2`):
/// `503 Shutdown` (the APNs server is going down) and `429 TooManyProviderTokenUpdates` (APNs finds the provider
/// token changed too soon on that connection; a new connection's first token is no update), docs/apns-protocol.md#reasons.
const CONNECTION_REFUSALS: [&str; 2] = ["Shutdown", "TooManyProviderTokenUpdates"];

/// The connections' results on their way to the queue. A notification refused by one of the
/// [`CONNECTION_REFUSALS`] comes back unsent, to go out at once on another connection without an attempt counted:
/// APNs did not deliver it, so sending it again cannot make a duplicate. A second such answer in a row for the same
/// notification ([`Queued::refusal_handed_back`], whichever of the two each was) counts as the transient failure
/// it is, so that a server answering nothing else cannot keep a notification going round for free; the connections
/// it retires meanwhile count as failed connection attempts while young ([`PROBATION`]), so they back off.
struct HandBackOnce {
    inner: Arc<dyn OutcomeSink<Box<Queued>>>,
}

impl OutcomeSink<Box<Queued>> for HandBackOnce {
    fn report(&self, mut tag: Box<Queued>, result: PushResult, conn: &ConnectionInfo) {
        let result = match result {
            PushResult::Rejected(rejection @ Rejection::Http { .. })
                if CONNECTION_REFUSALS.contains(&rejection.text()) && !tag.refusal_handed_back =>
            {
                tag.refusal_handed_back = true;
                tracing::debug!(id = %tag.notification.id, conn = conn.id,
                    "{} {}: handed back unsent for another connection", rejection.code(), rejection.text());
                PushResult::NotSent(NotSentReason::Refused)
            }
            other => {
                tag.refusal_handed_back = false;
                other
            }
        };
        self.inner.report(tag, result, conn);
    }
}

/// What [`Pool::room_to_grow`] reads of one connection taking work.
struct Load {
    /// Saturated at the server's stream limit, or ramping up with a full round of fast answers and no slow one.
    needs_help: bool,
    capacity: usize,
    in_flight: usize,
}

/// [`Pool::room_to_grow`] over the connections taking work and the attempts under way.
fn room_to_grow(connections: impl Iterator<Item = Load>, connecting: usize) -> Option<usize> {
    let mut room = 0usize;
    let mut smallest: Option<usize> = None;
    for c in connections {
        if !c.needs_help {
            return None;
        }
        // A server that sends no SETTINGS_MAX_CONCURRENT_STREAMS allows any number of streams: h2 shows that as
        // `usize::MAX`, so the sums saturate.
        room = room.saturating_add(c.capacity.saturating_sub(c.in_flight));
        smallest = Some(smallest.map_or(c.capacity, |s| s.min(c.capacity)));
    }
    if connecting > 0 {
        // Without an open connection to go by, wait for the attempt under way.
        room = room.saturating_add(connecting.saturating_mul(smallest?));
    }
    Some(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(capacity: usize, in_flight: usize) -> Load {
        Load {
            needs_help: true,
            capacity,
            in_flight,
        }
    }

    /// Against a server that sets no stream limit, a connection's limit is `usize::MAX` for a moment: the sums over
    /// connections saturate (a release build would wrap them into a small number, a debug build panic).
    #[test]
    fn sums_over_unlimited_connections_saturate() {
        struct NoEvents;
        impl PoolEvents for NoEvents {
            fn connected(&self, _: u64, _: ConnectResult) {}
        }
        struct NoSink;
        impl OutcomeSink<Box<Queued>> for NoSink {
            fn report(&self, _: Box<Queued>, _: PushResult, _: &ConnectionInfo) {}
        }
        let settings = Arc::new(DeliverySettings::for_tests("pool.example", 1));
        let mut pool = Pool::new(settings, 0, Arc::new(NoSink), Arc::new(NoEvents));
        for _ in 0..2 {
            pool.connecting += 1;
            let unlimited = herald_apns::client::ConnectionState::unsettled(usize::MAX);
            assert_eq!(pool.on_connected(0, Ok(unlimited)), ConnectOutcome::Opened);
        }
        assert_eq!(pool.dispatch_limit(), usize::MAX);
        assert_eq!(pool.streams(), (0, usize::MAX));
    }

    #[test]
    fn room_is_what_the_connections_and_attempts_could_still_take() {
        assert_eq!(
            room_to_grow([load(100, 100), load(100, 40)].into_iter(), 0),
            Some(60)
        );
        assert_eq!(
            room_to_grow([load(100, 100), load(50, 50)].into_iter(), 2),
            Some(100)
        );
        let idle = Load {
            needs_help: false,
            capacity: 100,
            in_flight: 3,
        };
        assert_eq!(room_to_grow([load(100, 100), idle].into_iter(), 0), None);
        assert_eq!(
            room_to_grow(std::iter::empty(), 1),
            None,
            "nothing to go by"
        );
    }

    /// A server without SETTINGS_MAX_CONCURRENT_STREAMS: the capacity h2 shows is `usize::MAX`, and the room
    /// saturates instead of overflowing (a panic in a debug build, wrapped sums in a release one).
    #[test]
    fn an_unlimited_server_saturates_the_room() {
        let unlimited = load(usize::MAX, 10);
        assert_eq!(
            room_to_grow([unlimited, load(usize::MAX, 0)].into_iter(), 3),
            Some(usize::MAX)
        );
    }

    /// A young connection whose server sends GOAWAY right after the first request and then accepts the stream its
    /// GOAWAY covers (`herald sim` with `goaway_every` 1, each answer a second late) is no failed connection
    /// attempt: the pool waits for the covered stream before it judges the connection, so the GOAWAY costs no
    /// backoff (docs/apns-protocol.md#http2-connection). A GOAWAY that covers nothing (the simulator's
    /// `goaway_first_request`) is judged at once, a failed attempt as before.
    #[tokio::test]
    async fn a_young_connection_whose_covered_stream_is_accepted_after_its_goaway_has_not_failed() {
        use crate::model::message::{MessageId, Notification};
        use herald_apns::client::PushRequest;
        use herald_apns::client::connect::Endpoint;
        use herald_apns::identity::{ClientIdentity, RootSource, client_config};
        use herald_sim::{CertVariant, Pki, SimConfig, Simulator};

        const TOPIC: &str = "com.example.app";
        struct Events;
        impl PoolEvents for Events {
            fn connected(&self, _: u64, _: ConnectResult) {}
        }
        struct Sink(tokio::sync::mpsc::UnboundedSender<PushResult>);
        impl OutcomeSink<Box<Queued>> for Sink {
            fn report(&self, _: Box<Queued>, result: PushResult, _: &ConnectionInfo) {
                let _ = self.0.send(result);
            }
        }
        async fn wait_until(what: &str, done: impl Fn() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done() {
                assert!(Instant::now() < deadline, "{what} within 20 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let job = || PoolJob {
            request: PushRequest {
                token: herald_apns::token_hex::DeviceToken::from_hex(&"ab".repeat(32)).unwrap(),
                topic: Some(Arc::from(TOPIC)),
                push_type: None,
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: bytes::Bytes::from_static(br#"{"aps":{}}"#),
            },
            tag: Queued::new(Notification {
                id: MessageId::NONE,
                batch_id: MessageId::NONE,
                conn_id: MessageId::NONE,
                domain: Arc::from("pool.example"),
                binding: Arc::from("default"),
                push: PushRequest {
                    token: herald_apns::token_hex::DeviceToken::from_hex(&"ab".repeat(32)).unwrap(),
                    topic: None,
                    push_type: None,
                    priority: None,
                    expiration: None,
                    collapse_id: None,
                    apns_id: None,
                    payload: bytes::Bytes::new(),
                },
                sender: Arc::from(""),
                recipient_given: None,
                received_at: 0,
            }),
        };
        for covering in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
            let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
            if covering {
                config.scenario.goaway_every = Some(1);
                config.scenario.latency_ms = 1000;
            } else {
                config.scenario.goaway_first_request = true;
            }
            let sim = Simulator::start(config).await.unwrap();
            let h2 = sim.addrs.h2;
            let files = pki.client(TOPIC, CertVariant::Universal).unwrap();
            let identity = ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap();
            let mut settings = DeliverySettings::for_tests("pool.example", h2.port());
            settings.endpoint = Endpoint::new(h2.ip().to_string(), h2.port());
            settings.tls = client_config(
                Some(&identity),
                RootSource::CaFile(pki.manifest.ca_cert.clone()),
                true,
            )
            .unwrap();
            settings.response_timeout = Duration::from_secs(10);
            let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
            let mut pool = Pool::new(Arc::new(settings), 0, Arc::new(Sink(tx)), Arc::new(Events));
            // The attempt, as `open_one` makes it, reported to the pool directly.
            pool.connecting += 1;
            let opened =
                http2::open(pool.h2.clone(), 1, pool.jobs_rx.clone(), pool.sink.clone()).await;
            let state = opened.as_ref().unwrap().clone();
            assert_eq!(pool.on_connected(0, opened), ConnectOutcome::Opened);
            pool.submit(job());
            // The pool looks at the connection as soon as its GOAWAY is known, and again once it has closed.
            wait_until("the GOAWAY", || state.fault().is_some()).await;
            pool.prune();
            let result = tokio::time::timeout(Duration::from_secs(20), results.recv())
                .await
                .expect("the notification's result")
                .unwrap();
            wait_until("the connection closed", || state.is_closed()).await;
            pool.prune();
            assert!(pool.young.is_empty(), "the connection was not judged");
            if covering {
                assert!(matches!(result, PushResult::Delivered { .. }), "{result:?}");
                assert_eq!(pool.consecutive_failures, 0, "{:?}", pool.last_error());
                assert!(pool.last_error().is_none(), "{:?}", pool.last_error());
            } else {
                assert_eq!(result, PushResult::NotSent(NotSentReason::Refused));
                assert_eq!(pool.consecutive_failures, 1);
                assert!(
                    pool.last_error()
                        .is_some_and(|e| e.contains("before APNs accepted a notification")),
                    "{:?}",
                    pool.last_error()
                );
            }
        }
    }

    /// A connection attempt whose task panics is reported to the owner as a failed attempt naming the panic: the
    /// pool no longer counts it as under way, and the next attempt opens a connection (against the simulator,
    /// over TLS).
    #[tokio::test]
    async fn a_panicking_connection_attempt_is_a_failed_attempt_and_the_next_one_opens() {
        use herald_apns::client::connect::Endpoint;
        use herald_apns::identity::{RootSource, client_config};
        use herald_sim::{Pki, SimConfig, Simulator};

        struct Events(tokio::sync::mpsc::UnboundedSender<(u64, ConnectResult)>);
        impl PoolEvents for Events {
            fn connected(&self, generation: u64, result: ConnectResult) {
                let _ = self.0.send((generation, result));
            }
        }
        struct NoSink;
        impl OutcomeSink<Box<Queued>> for NoSink {
            fn report(&self, _: Box<Queued>, _: PushResult, _: &ConnectionInfo) {}
        }
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &["com.example.app".to_string()]).unwrap();
        let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
            .await
            .unwrap();
        let h2 = sim.addrs.h2;
        let mut settings = DeliverySettings::for_tests("pool.example", h2.port());
        settings.endpoint = Endpoint::new(h2.ip().to_string(), h2.port());
        settings.tls =
            client_config(None, RootSource::CaFile(pki.manifest.ca_cert.clone()), true).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut pool = Pool::new(
            Arc::new(settings),
            0,
            Arc::new(NoSink),
            Arc::new(Events(tx)),
        );
        let mut next_report = async || {
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("the attempt is reported")
                .unwrap()
        };
        pool.connect_panics = true;
        assert!(pool.open_one());
        assert_eq!(pool.open_connections(), 1, "the attempt is under way");
        let (generation, result) = next_report().await;
        assert!(
            matches!(&result, Err(ConnectionError::Panicked { message, .. })
                if message == "a test made the connection attempt panic"),
            "{result:?}"
        );
        assert_eq!(
            pool.on_connected(generation, result),
            ConnectOutcome::Failed {
                delay_domain: false
            }
        );
        assert_eq!(pool.open_connections(), 0);
        assert!(
            pool.last_error().is_some_and(|e| e.contains("panicked")),
            "{:?}",
            pool.last_error()
        );
        assert!(pool.open_one());
        let (generation, result) = next_report().await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            pool.on_connected(generation, result),
            ConnectOutcome::Opened
        );
        assert_eq!(pool.open_connections(), 1);
    }
}
