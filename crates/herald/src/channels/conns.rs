//! The connections kept for channel management ([`super::ChannelManager`]) and for broadcasts
//! ([`crate::broadcasts::Broadcaster`]): at most one per domain, opened on demand and shared by the domain's calls
//! (one HTTP/2 stream each).
//!
//! A kept connection does not live for good. It is closed (`GOAWAY(NO_ERROR)`, then the socket) and forgotten, its
//! domain leaving the map, once it has been unused for the domain's `idle_timeout` (as a delivery connection is;
//! 0 keeps it), once the server closed it, and once a reload removed the domain or changed its route or credentials.
//! The next call opens a new one. A connection is in use from the moment a call is handed it ([`Lease`]) until the
//! call ends, and it is handed out and closed for idleness under the same lock: a call is never handed a connection
//! being closed for idleness, and one that is in use is not closed for it. A connection a reload made stale while a
//! call is on it is forgotten at once and closes when that call ends.
//!
//! A kept connection may have died without a word (a NAT or a middlebox that forgot it, a server gone without a
//! FIN), which a long `idle_timeout` leaves plenty of time for; a call sent on it would wait its whole timeout for
//! nothing. So a kept connection from which nothing has been heard for [`LIVENESS_THRESHOLD`] (no answer, no PING
//! answer, no frame at all) is asked with an HTTP/2 PING before it is handed out, as a device-push connection is
//! (docs/apns-protocol.md §3.7). Without an answer within [`LIVENESS_PING_TIMEOUT`] (never longer than the call
//! timeout) it is closed and forgotten, and the call goes out on a new connection: it was not sent on the dead one,
//! so it is sent once. The PING is sent and waited for under the domain's lock only, as a connection is opened:
//! calls of the domain wait for it (they would be handed the same connection), calls of other domains do not.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use herald_apns::broadcast::{BroadcastClient, BroadcastClientError};
use herald_apns::client::http2::{LIVENESS_PING_TIMEOUT, LIVENESS_THRESHOLD};
use tokio::time::Instant;

use super::{Purpose, Target, resolve_for};
use crate::delivery::ConfigResolver;

/// How often a kept connection looks whether a reload put another configuration in force (the domain may be gone, or
/// reach APNs otherwise now).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A domain's kept connection, or none.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The domains' slots. A clone of a slot is made only under this lock, and given up under it ([`SlotHold`]), so that
/// an empty slot is removed by the last of its users, whichever that is ([`release`]).
type Slots = Mutex<HashMap<String, Slot>>;

/// A clone of a domain's slot, held while it is used: given up under the map's lock, and the slot removed from the
/// map then if it is empty and nobody else holds it (however the use ended, a failed connection attempt or a
/// watch finding its connection gone, and whichever of them ends last).
struct SlotHold<'a> {
    slots: &'a Slots,
    domain: &'a str,
    slot: Option<Slot>,
}

impl<'a> SlotHold<'a> {
    /// The domain's slot, made when it has none.
    fn new(slots: &'a Slots, domain: &'a str) -> SlotHold<'a> {
        let slot = lock(slots).entry(domain.to_owned()).or_default().clone();
        SlotHold {
            slots,
            domain,
            slot: Some(slot),
        }
    }

    /// The domain's slot, if it has one.
    fn existing(slots: &'a Slots, domain: &'a str) -> Option<SlotHold<'a>> {
        let slot = lock(slots).get(domain).cloned()?;
        Some(SlotHold {
            slots,
            domain,
            slot: Some(slot),
        })
    }
}

impl Deref for SlotHold<'_> {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        // Set until dropped.
        self.slot.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for SlotHold<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            release(self.slots, self.domain, slot);
        }
    }
}

/// A kept connection and what it was opened for.
pub(crate) struct Cached {
    target: Arc<Target>,
    client: BroadcastClient,
    usage: Arc<Usage>,
    /// The configuration in force when the connection was opened, or when a reload was last found to leave it
    /// usable.
    config: Weak<herald_conf::Config>,
}

impl Cached {
    /// The connection for one more call (under the slot's lock).
    fn lease(&self) -> Lease {
        self.usage.acquire();
        Lease {
            client: self.client.clone(),
            usage: self.usage.clone(),
        }
    }
}

/// How many calls hold a connection, and since when none has.
struct Usage(Mutex<(usize, Instant)>);

impl Usage {
    fn new() -> Usage {
        Usage(Mutex::new((0, Instant::now())))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(&self) {
        self.state().0 += 1;
    }

    fn release(&self) {
        let mut state = self.state();
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }

    /// When the last call holding the connection ended (or it opened); `None` while a call holds it.
    fn unused_since(&self) -> Option<Instant> {
        let state = self.state();
        (state.0 == 0).then_some(state.1)
    }
}

/// A kept connection handed to a call: in use until dropped.
pub(crate) struct Lease {
    client: BroadcastClient,
    usage: Arc<Usage>,
}

impl Deref for Lease {
    type Target = BroadcastClient;

    fn deref(&self) -> &BroadcastClient {
        &self.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.usage.release();
    }
}

/// Why [`Connections::get`] gave no connection. Nothing was sent.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// The domain's lock, held by a call opening its connection (or asking the kept one with a PING), was not had
    /// within the wait given.
    Wait { secs: u64 },
    /// Opening a connection failed.
    Connect(BroadcastClientError),
}

/// See the module documentation.
pub(crate) struct Connections {
    resolver: Arc<ConfigResolver>,
    purpose: Purpose,
    /// Bounds opening a connection.
    connect_timeout: Duration,
    slots: Arc<Slots>,
    /// When a kept connection is asked with a PING before it is handed out, and how long its answer may take.
    liveness: Mutex<Liveness>,
}

/// See [`Connections::liveness`].
#[derive(Debug, Clone, Copy)]
struct Liveness {
    /// A kept connection nothing has been heard from for this long is asked with a PING before it is handed out.
    silence: Duration,
    /// How long the PING's answer may take (never longer than the call timeout).
    answer: Duration,
}

impl Connections {
    pub(crate) fn new(
        resolver: Arc<ConfigResolver>,
        purpose: Purpose,
        connect_timeout: Duration,
    ) -> Connections {
        Connections {
            resolver,
            purpose,
            connect_timeout,
            slots: Arc::default(),
            liveness: Mutex::new(Liveness {
                silence: LIVENESS_THRESHOLD,
                answer: LIVENESS_PING_TIMEOUT,
            }),
        }
    }

    /// Asks kept connections silent for `silence` with a PING answered within `answer` (tests).
    #[cfg(test)]
    pub(crate) fn set_liveness(&self, silence: Duration, answer: Duration) {
        *lock(&self.liveness) = Liveness { silence, answer };
    }

    /// The domain's connection for a call to `target`, and whether it was opened for it: the kept one when it is
    /// open, for the same target, not `failed` (a connection that failed a call about to be made again), and heard
    /// from lately or answering a PING (see the module documentation), else a new one, which is kept. Of the calls
    /// that failed on one connection together, the first opens a new connection and the others use it. The domain's
    /// lock is held while the connection is taken, checked or opened (so that calls at once open one between them),
    /// and waited for at most `wait` when given.
    pub(crate) async fn get(
        &self,
        domain: &str,
        target: &Arc<Target>,
        failed: Option<&BroadcastClient>,
        wait: Option<Duration>,
    ) -> Result<(Lease, bool), Unavailable> {
        let slot = SlotHold::new(&self.slots, domain);
        let mut kept =
            match wait {
                Some(wait) => tokio::time::timeout(wait, slot.lock()).await.map_err(|_| {
                    Unavailable::Wait {
                        secs: wait.as_secs(),
                    }
                })?,
                None => slot.lock().await,
            };
        if let Some(c) = kept.as_ref()
            && !c.client.is_closed()
            && c.target.same_connection(target)
            && failed.is_none_or(|f| !c.client.same_connection(f))
        {
            let liveness = *lock(&self.liveness);
            let silent = c.client.silent_for();
            if silent < liveness.silence {
                return Ok((c.lease(), false));
            }
            match c.client.ping(liveness.answer).await {
                Ok(()) => return Ok((c.lease(), false)),
                Err(e) => tracing::debug!(
                    %domain,
                    purpose = ?self.purpose,
                    "kept connection closed: nothing heard from it for {} ms and its PING went unanswered ({e})",
                    silent.as_millis()
                ),
            }
        }
        // The connection it held closes once the calls still on it have ended.
        *kept = None;
        let opened = match tokio::time::timeout(self.connect_timeout, target.connect()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(BroadcastClientError::from(e)),
            Err(_) => Err(BroadcastClientError::Timeout {
                host: target.endpoint.to_string(),
                secs: self.connect_timeout.as_secs(),
            }),
        };
        let client = match opened {
            Ok(client) => client,
            // The slot, left empty, goes with the last of its holders (`SlotHold`).
            Err(e) => return Err(Unavailable::Connect(e)),
        };
        let cached = Cached {
            target: target.clone(),
            client,
            usage: Arc::new(Usage::new()),
            // The configuration the target was resolved under: a reload since (even one before this call took the
            // domain's lock) is looked at by the new connection's watch.
            config: target.config.clone(),
        };
        let lease = cached.lease();
        let watch = Watch {
            slots: Arc::downgrade(&self.slots),
            resolver: self.resolver.clone(),
            purpose: self.purpose,
            domain: domain.to_owned(),
            usage: cached.usage.clone(),
            idle_timeout: target.idle_timeout,
        };
        *kept = Some(cached);
        tokio::spawn(watch.run());
        Ok((lease, true))
    }

    /// Drops the domain's connection if it is still `failed`: a call on it failed in a way that says it should not
    /// be used again. Calls still on it finish on it.
    pub(crate) async fn forget(&self, domain: &str, failed: &BroadcastClient) {
        let Some(slot) = SlotHold::existing(&self.slots, domain) else {
            return;
        };
        let mut kept = slot.lock().await;
        if kept
            .as_ref()
            .is_some_and(|c| c.client.same_connection(failed))
        {
            *kept = None;
        }
    }

    /// The domains that have a connection kept or a slot for one (tests).
    #[cfg(test)]
    pub(crate) fn domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = lock(&self.slots).keys().cloned().collect();
        domains.sort();
        domains
    }

    /// How many hold the domain's slot, the map included; `None` without one (tests).
    #[cfg(test)]
    pub(crate) fn slot_holders(&self, domain: &str) -> Option<usize> {
        lock(&self.slots).get(domain).map(Arc::strong_count)
    }

    /// How long nothing has been heard from the domain's kept connection; `None` without one, or while its lock is
    /// held (tests).
    #[cfg(test)]
    pub(crate) fn silent_for(&self, domain: &str) -> Option<Duration> {
        let slot = SlotHold::existing(&self.slots, domain)?;
        let kept = slot.try_lock().ok()?;
        kept.as_ref().map(|c| c.client.silent_for())
    }

    /// Holds the domain's lock, as a call opening its connection does (tests).
    #[cfg(test)]
    pub(crate) async fn hold(&self, domain: &str) -> tokio::sync::OwnedMutexGuard<Option<Cached>> {
        let slot = lock(&self.slots)
            .entry(domain.to_owned())
            .or_default()
            .clone();
        slot.lock_owned().await
    }
}

/// Gives up a clone of the domain's slot (`slot`), under the map's lock: the slot leaves the map when it is the
/// domain's, empty, and held by nobody but the map and the caller. Every holder that gives its clone up this way
/// looks, the last one with no other holder left, so an empty slot never stays behind.
fn release(slots: &Slots, domain: &str, slot: Slot) {
    let mut map = lock(slots);
    if map.get(domain).is_some_and(|s| Arc::ptr_eq(s, &slot))
        && Arc::strong_count(&slot) == 2
        && slot.try_lock().is_ok_and(|kept| kept.is_none())
    {
        map.remove(domain);
    }
    // Given up while the map is locked, so that the next holder to look counts it gone.
    drop(slot);
    drop(map);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches one kept connection until it is no longer kept: closes it after `idle_timeout` unused, forgets it once it
/// has closed, and after a reload keeps it only if the domain still reaches APNs the same way. Holds nothing of the
/// connection but its usage, so that a connection dropped otherwise closes at once.
struct Watch {
    slots: Weak<Slots>,
    resolver: Arc<ConfigResolver>,
    purpose: Purpose,
    domain: String,
    usage: Arc<Usage>,
    idle_timeout: Option<Duration>,
}

impl Watch {
    async fn run(mut self) {
        loop {
            let check = Instant::now() + RELOAD_CHECK;
            let wake = match (self.idle_timeout, self.usage.unused_since()) {
                (Some(idle), Some(since)) => (since + idle).min(check),
                _ => check,
            };
            tokio::time::sleep_until(wake).await;
            if !self.step().await {
                return;
            }
        }
    }

    /// One look at the connection; false once it is no longer kept (closed and forgotten here, or replaced).
    async fn step(&mut self) -> bool {
        let Some(slots) = self.slots.upgrade() else {
            return false;
        };
        let Some(slot) = SlotHold::existing(&slots, &self.domain) else {
            return false;
        };
        let current = self.resolver.config();
        let reloaded = {
            let kept = slot.lock().await;
            match kept.as_ref() {
                Some(c) if Arc::ptr_eq(&c.usage, &self.usage) => {
                    !std::ptr::eq(c.config.as_ptr(), Arc::as_ptr(&current))
                }
                _ => return false,
            }
        };
        // Resolved without the domain's lock: it reads credential files, and calls go on meanwhile.
        let resolved = if reloaded {
            let resolver = self.resolver.clone();
            let (domain, purpose) = (self.domain.clone(), self.purpose);
            tokio::task::spawn_blocking(move || resolve_for(&resolver, &domain, purpose))
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let mut kept = slot.lock().await;
        let Some(c) = kept.as_mut().filter(|c| Arc::ptr_eq(&c.usage, &self.usage)) else {
            return false;
        };
        let why = if reloaded {
            match resolved {
                Some(target) if target.same_connection(&c.target) => {
                    self.idle_timeout = target.idle_timeout;
                    c.target = Arc::new(target);
                    c.config = Arc::downgrade(&current);
                    None
                }
                _ => {
                    Some("the configuration reloaded no longer has the domain reach APNs this way")
                }
            }
        } else {
            None
        };
        let why = why.or_else(|| {
            if c.client.is_closed() {
                Some("the connection has ended")
            } else if let (Some(idle), Some(since)) = (self.idle_timeout, self.usage.unused_since())
                && since.elapsed() >= idle
            {
                Some("unused for idle_timeout")
            } else {
                None
            }
        });
        let Some(why) = why else {
            return true;
        };
        tracing::debug!(domain = %self.domain, purpose = ?self.purpose, "kept connection closed: {why}");
        // Dropping the last clone of the connection closes it with GOAWAY; one a call still holds (a reload made it
        // stale) closes when that call ends. The slot, left empty, goes with the last of its holders (`SlotHold`).
        *kept = None;
        false
    }
}
