//! The control listener's guard against password guessing: a lockout per client, and a budget of wrong passwords
//! for the whole listener.
//!
//! The check and the count are one step under one lock: an `auth` first reserves a failure ([`AuthGate::begin`]),
//! which counts against its client and the listener at once, then its password is compared, and a right one
//! releases the reservation ([`Attempt::succeeded`]). So `auth` lines sent at once on many connections from one
//! address cannot all pass the check before any of them counts: at most [`super::AUTH_FAILURES`] are compared.
//!
//! A client (an IPv4 address, an IPv6 /64, a local user) with [`super::AUTH_FAILURES`] wrong passwords within
//! [`super::AUTH_WINDOW`] is refused every `auth` until that window has passed since its last wrong one. Across
//! all clients, the listener takes at most [`LISTENER_AUTH_FAILURES`] wrong passwords within the window: the one
//! that reaches it refuses every `auth` of the listener, from anyone, right password included, for a whole window
//! (a guesser spread over many addresses, say every /64 of a /48, gets no more guesses than that). Clients are
//! followed up to [`crate::access::MAX_TRACKED_ADDRESSES`] at once; beyond, a new client's wrong passwords are
//! not counted against it, but still against the listener's budget.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::Client;

/// Wrong passwords one control listener takes within [`super::AUTH_WINDOW`], from all its clients together,
/// before it refuses every `auth` for a whole window.
pub const LISTENER_AUTH_FAILURES: usize = 100;
/// How often, at most, clients whose wrong passwords all aged out are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// One listener's record of wrong passwords.
#[derive(Debug)]
pub(crate) struct AuthGate {
    per_client: usize,
    per_listener: usize,
    window: Duration,
    max_clients: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Per client (its block), its recent failures, oldest first (at most `per_client`).
    clients: HashMap<Client, VecDeque<Instant>>,
    /// The recent failures of every client, oldest first (at most `per_listener`).
    all: VecDeque<Instant>,
    /// Until when every `auth` is refused: the listener's budget was spent.
    closed_until: Option<Instant>,
    pruned: Instant,
}

/// Why an `auth` is refused without its password being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client sent too many wrong passwords; it may try again in `wait`.
    Client { wait: Duration },
    /// The listener took too many wrong passwords from all its clients; every `auth` is refused for `wait`.
    Listener { wait: Duration },
}

/// An `auth` let through: it counts as a failure until [`Attempt::succeeded`] says its password was right.
#[derive(Debug)]
#[must_use = "a right password must release its reservation"]
pub(crate) struct Attempt<'a> {
    gate: &'a AuthGate,
    client: Client,
    at: Instant,
}

/// What a wrong password left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The client's wrong passwords within the window (this one included); 0 when the client is not followed
    /// (too many clients at once): it then counts against the listener only.
    pub client: usize,
    /// The listener's wrong passwords within the window.
    pub listener: usize,
    /// Set when this one spent the listener's budget: every `auth` is refused from now on for this long.
    pub closed_for: Option<Duration>,
}

/// What failures count under: an address's block (an IPv6 /64), or the local user.
fn block(client: Client) -> Client {
    match client {
        Client::Address(ip) => Client::from(crate::access::bucket(Some(ip))),
        local => local,
    }
}

impl Default for AuthGate {
    fn default() -> Self {
        AuthGate::new(
            super::AUTH_FAILURES,
            LISTENER_AUTH_FAILURES,
            super::AUTH_WINDOW,
            crate::access::MAX_TRACKED_ADDRESSES,
        )
    }
}

impl AuthGate {
    pub(crate) fn new(
        per_client: usize,
        per_listener: usize,
        window: Duration,
        max_clients: usize,
    ) -> AuthGate {
        AuthGate {
            per_client: per_client.max(1),
            per_listener: per_listener.max(1),
            window,
            max_clients,
            inner: Mutex::new(Inner {
                clients: HashMap::new(),
                all: VecDeque::new(),
                closed_until: None,
                pruned: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets an `auth` from `who` be looked at, counting it as a failure (until it succeeds), or says why not: in
    /// one step, so that no other `auth` passes the check between this one's check and its count.
    pub(crate) fn begin(&self, who: Client) -> Result<Attempt<'_>, Refusal> {
        let now = Instant::now();
        let window = self.window;
        let mut inner = self.lock();
        if let Some(until) = inner.closed_until {
            if until > now {
                return Err(Refusal::Listener { wait: until - now });
            }
            inner.closed_until = None;
        }
        while inner
            .all
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            inner.all.pop_front();
        }
        // Attempts under way count: they are failures until their password proves right.
        if inner.all.len() >= self.per_listener {
            let oldest = inner.all.front().copied().unwrap_or(now);
            return Err(Refusal::Listener {
                wait: window.saturating_sub(now.duration_since(oldest)),
            });
        }
        let key = block(who);
        if let Some(recent) = inner.clients.get_mut(&key) {
            let last = recent.back().copied();
            match last {
                Some(last) if now.duration_since(last) >= window => recent.clear(),
                // Locked until the window has passed since its last wrong password.
                Some(last) if recent.len() >= self.per_client => {
                    return Err(Refusal::Client {
                        wait: window.saturating_sub(now.duration_since(last)),
                    });
                }
                _ => recent.retain(|t| now.duration_since(*t) < window),
            }
        }
        if !inner.clients.contains_key(&key) && inner.clients.len() >= self.max_clients {
            inner.prune(now, window, false);
        }
        if inner.clients.contains_key(&key) || inner.clients.len() < self.max_clients {
            inner.clients.entry(key).or_default().push_back(now);
        }
        inner.all.push_back(now);
        inner.prune(now, window, false);
        Ok(Attempt {
            gate: self,
            client: key,
            at: now,
        })
    }

    #[cfg(test)]
    fn followed(&self) -> usize {
        let mut inner = self.lock();
        inner.prune(Instant::now(), self.window, true);
        inner.clients.len()
    }
}

impl Inner {
    /// Forgets the clients whose failures all aged out, at most every [`PRUNE_EVERY`] (or at once with `now`).
    fn prune(&mut self, now: Instant, window: Duration, at_once: bool) {
        if at_once || now.duration_since(self.pruned) >= PRUNE_EVERY {
            self.clients
                .retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < window));
            self.pruned = now;
        }
    }

    /// Takes back one reservation made at `at` from the listener's count (and the client's, `client`).
    fn release(&mut self, client: Option<&Client>, at: Instant) {
        if let Some(i) = self.all.iter().rposition(|t| *t == at) {
            self.all.remove(i);
        }
        if let Some(c) = client
            && let Some(recent) = self.clients.get_mut(c)
            && let Some(i) = recent.iter().rposition(|t| *t == at)
        {
            recent.remove(i);
        }
    }
}

impl Attempt<'_> {
    /// The password was right: the reservation is taken back, and the client starts again from zero (the
    /// console's single password proves everything a guess could find).
    pub(crate) fn succeeded(self) {
        let mut inner = self.gate.lock();
        inner.release(None, self.at);
        inner.clients.remove(&self.client);
    }

    /// The password was wrong: the reservation stands as a failure. Reaching the listener's budget refuses every
    /// `auth` for a window from now.
    pub(crate) fn failed(self) -> Failure {
        let now = Instant::now();
        let mut inner = self.gate.lock();
        let client = inner.clients.get(&self.client).map_or(0, VecDeque::len);
        let listener = inner.all.len();
        let mut closed_for = None;
        if listener >= self.gate.per_listener && inner.closed_until.is_none_or(|u| u <= now) {
            inner.closed_until = Some(now + self.gate.window);
            closed_for = Some(self.gate.window);
        }
        Failure {
            client,
            listener,
            closed_for,
        }
    }

    /// The attempt ended without a verdict (never looked at): its reservation is taken back, as if it never came.
    #[cfg(test)]
    fn abandoned(self) {
        let mut inner = self.gate.lock();
        let client = self.client;
        inner.release(Some(&client), self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> Client {
        Client::Address(s.parse::<IpAddr>().unwrap())
    }

    fn gate(per_client: usize, per_listener: usize, max_clients: usize) -> AuthGate {
        AuthGate::new(
            per_client,
            per_listener,
            Duration::from_secs(60),
            max_clients,
        )
    }

    /// `auth` lines that arrive at once (none has been answered yet) are each counted as they are let through:
    /// beyond the limit, the next is refused before any of them is known to be wrong.
    #[test]
    fn attempts_under_way_count_against_the_client() {
        let g = gate(5, 100, 10);
        let who = ip("192.0.2.7");
        let pending: Vec<_> = (0..5).map(|_| g.begin(who).expect("let through")).collect();
        assert!(
            matches!(g.begin(who), Err(Refusal::Client { .. })),
            "a sixth at once is refused"
        );
        assert!(g.begin(ip("192.0.2.8")).is_ok(), "another address is not");
        for a in pending {
            let f = a.failed();
            assert!(f.client <= 5 && f.closed_for.is_none(), "{f:?}");
        }
        let Err(Refusal::Client { wait }) = g.begin(who) else {
            panic!("still locked");
        };
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
    }

    /// A right password releases its reservation and clears the client; its reservation never counted against
    /// the listener.
    #[test]
    fn a_right_password_releases_its_reservation() {
        let g = gate(2, 100, 10);
        let who = ip("2001:db8:1:2::1");
        g.begin(who).unwrap().failed();
        g.begin(ip("2001:db8:1:2::99")).unwrap().succeeded();
        // The /64 started again from zero: two more may be tried.
        g.begin(who).unwrap().failed();
        let f = g.begin(who).unwrap().failed();
        assert_eq!(f.client, 2);
        assert!(matches!(g.begin(who), Err(Refusal::Client { .. })));
        for _ in 0..10 {
            g.begin(ip("198.51.100.1")).unwrap().succeeded();
        }
        // Three failures in all: the successes took nothing from the listener's budget.
        assert_eq!(g.lock().all.len(), 3);
    }

    /// Past the listener's budget, every `auth` is refused for a whole window, from any address, whatever its own
    /// count; the failure that spends it says so (once).
    #[test]
    fn the_listener_budget_refuses_everyone_once_spent() {
        let g = gate(5, 10, 1000);
        let mut closed = Vec::new();
        for i in 0..10u32 {
            // One guess per /64 of a /48.
            let who = ip(&format!("2001:db8:7:{i:x}::1"));
            let f = g.begin(who).expect("within the budget").failed();
            assert_eq!(f.client, 1);
            assert_eq!(f.listener, i as usize + 1);
            closed.extend(f.closed_for);
        }
        assert_eq!(closed, [Duration::from_secs(60)]);
        for who in [
            ip("2001:db8:7:ffff::1"),
            ip("192.0.2.1"),
            Client::LocalUser(Some(0)),
        ] {
            let Err(Refusal::Listener { wait }) = g.begin(who) else {
                panic!("{who} let through");
            };
            assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        }
    }

    /// Attempts under way count against the listener's budget too.
    #[test]
    fn attempts_under_way_count_against_the_listener() {
        let g = gate(5, 3, 1000);
        let pending: Vec<_> = (0..3)
            .map(|i| g.begin(ip(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        assert!(matches!(
            g.begin(ip("192.0.2.200")),
            Err(Refusal::Listener { .. })
        ));
        for a in pending {
            a.abandoned();
        }
        assert!(g.begin(ip("192.0.2.200")).is_ok());
    }

    /// Beyond the clients it follows, a new client is not counted on its own, but its failures still count against
    /// the listener, so they still run out.
    #[test]
    fn failures_of_clients_beyond_those_followed_still_count() {
        let g = gate(5, 20, 4);
        for i in 0..4 {
            g.begin(ip(&format!("192.0.2.{i}"))).unwrap().failed();
        }
        assert_eq!(g.followed(), 4);
        let stranger = ip("203.0.113.9");
        let mut refused = None;
        for n in 0..100 {
            match g.begin(stranger) {
                Ok(a) => {
                    let f = a.failed();
                    assert_eq!(f.client, 0, "not followed");
                }
                Err(r) => {
                    refused = Some((n, r));
                    break;
                }
            }
        }
        let (n, r) = refused.expect("refused in the end");
        assert_eq!(n, 16, "20 failures in all");
        assert!(matches!(r, Refusal::Listener { .. }), "{r:?}");
        assert_eq!(g.followed(), 4);
    }
}
