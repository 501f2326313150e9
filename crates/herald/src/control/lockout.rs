//! The control listener's guard against password guessing: a lockout per client, and budgets of wrong passwords
//! for the whole listener, one for its loopback clients and one for all its other clients.
//!
//! The check and the count are one step under one lock: an `auth` first reserves a failure ([`AuthGate::begin`]),
//! which counts against its client and its budget at once, then its password is compared, and a right one
//! releases the reservation ([`Attempt::succeeded`]). So `auth` lines sent at once on many connections from one
//! address cannot all pass the check before any of them counts: at most [`super::AUTH_FAILURES`] are compared.
//!
//! A client (an IPv4 address, an IPv6 /64, a local user) with [`super::AUTH_FAILURES`] wrong passwords within
//! [`super::AUTH_WINDOW`] is refused every `auth` until that window has passed since its last wrong one. Across
//! clients, the listener takes at most [`LISTENER_AUTH_FAILURES`] wrong passwords within the window from its
//! loopback clients (127.0.0.0/8, `::1`, and 127.0.0.0/8 written as IPv4-mapped IPv6), and as many from all its
//! other clients (every other address, a Unix socket's local users, a TCP client whose address could not be
//! read). The wrong password that spends a budget refuses every `auth` from the clients that budget counts, right
//! password included, for a whole window (a guesser spread over many addresses, say every /64 of a /48, gets no
//! more guesses than that); the clients of the other budget are not affected.
//!
//! So guessers elsewhere on the network, however many addresses they use, cannot keep an operator on the machine
//! itself (connecting to 127.0.0.1 or `::1`) out, and a process on the machine guessing over loopback cannot keep
//! remote operators out. Loopback clients have a budget of their own rather than none because each address of
//! 127.0.0.0/8 is a client of its own: without a budget, a local process moving from address to address could
//! guess without limit.
//!
//! Clients are followed up to [`crate::access::MAX_TRACKED_ADDRESSES`] at once; beyond, a new client's wrong
//! passwords are not counted against it, but still against its budget.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::Client;

/// Wrong passwords one control listener takes within [`super::AUTH_WINDOW`] from its loopback clients together,
/// and as many from all its other clients together, before it refuses every `auth` of those clients for a whole
/// window.
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
    /// The tests' clock: it stands still until they move it.
    #[cfg(test)]
    clock: Mutex<Instant>,
}

#[derive(Debug)]
struct Inner {
    /// Per client (its block), its recent failures, oldest first (at most `per_client`).
    clients: HashMap<Client, VecDeque<Instant>>,
    /// The budget of the clients not on loopback.
    others: Budget,
    /// The budget of the loopback clients.
    loopback: Budget,
    pruned: Instant,
}

/// The recent failures of one group of clients, and whether the group is refused.
#[derive(Debug, Default)]
struct Budget {
    /// Oldest first (at most the listener's `per_listener`).
    all: VecDeque<Instant>,
    /// Until when every `auth` of the group is refused: its budget was spent.
    closed_until: Option<Instant>,
}

/// Why an `auth` is refused without its password being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client sent too many wrong passwords; it may try again in `wait`.
    Client { wait: Duration },
    /// The listener took too many wrong passwords from the clients of the budget this client counts against (the
    /// loopback clients, or all others); every `auth` of those is refused for `wait`.
    Listener { wait: Duration, loopback: bool },
}

/// An `auth` let through: it counts as a failure until [`Attempt::succeeded`] says its password was right.
#[derive(Debug)]
#[must_use = "a right password must release its reservation"]
pub(crate) struct Attempt<'a> {
    gate: &'a AuthGate,
    client: Client,
    loopback: bool,
    at: Instant,
}

/// What a wrong password left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The client's wrong passwords within the window (this one included); 0 when the client is not followed
    /// (too many clients at once): it then counts against its budget only.
    pub client: usize,
    /// The wrong passwords within the window against the budget this one counts against (this one included).
    pub listener: usize,
    /// Whether that budget is the loopback clients'.
    pub loopback: bool,
    /// Set when this one spent its budget: every `auth` of the clients of that budget is refused from now on for
    /// this long.
    pub closed_for: Option<Duration>,
}

/// What failures count under: an address's block (an IPv6 /64), or the local user.
fn block(client: Client) -> Client {
    match client {
        Client::Address(ip) => Client::from(crate::access::bucket(Some(ip))),
        local => local,
    }
}

/// Whether `client` connected from a loopback address: 127.0.0.0/8, `::1`, or an IPv4-mapped 127.0.0.0/8. A
/// Unix socket client (it has no address) is not.
pub(crate) fn on_loopback(client: Client) -> bool {
    match client {
        Client::Address(ip) => ip.to_canonical().is_loopback(),
        Client::LocalUser(_) => false,
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
        let now = Instant::now();
        AuthGate {
            per_client: per_client.max(1),
            per_listener: per_listener.max(1),
            window,
            max_clients,
            inner: Mutex::new(Inner {
                clients: HashMap::new(),
                others: Budget::default(),
                loopback: Budget::default(),
                pruned: now,
            }),
            #[cfg(test)]
            clock: Mutex::new(now),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(not(test))]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[cfg(test)]
    fn now(&self) -> Instant {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves this gate's clock `by` forward (tests: windows pass without waiting for them).
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    /// Lets an `auth` from `who` be looked at, counting it as a failure (until it succeeds), or says why not: in
    /// one step, so that no other `auth` passes the check between this one's check and its count.
    pub(crate) fn begin(&self, who: Client) -> Result<Attempt<'_>, Refusal> {
        let now = self.now();
        let window = self.window;
        let loopback = on_loopback(who);
        let mut inner = self.lock();
        let budget = inner.budget(loopback);
        if let Some(until) = budget.closed_until {
            if until > now {
                return Err(Refusal::Listener {
                    wait: until - now,
                    loopback,
                });
            }
            budget.closed_until = None;
        }
        while budget
            .all
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            budget.all.pop_front();
        }
        // Attempts under way count: they are failures until their password proves right.
        if budget.all.len() >= self.per_listener {
            let oldest = budget.all.front().copied().unwrap_or(now);
            return Err(Refusal::Listener {
                wait: window.saturating_sub(now.duration_since(oldest)),
                loopback,
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
        inner.budget(loopback).all.push_back(now);
        inner.prune(now, window, false);
        Ok(Attempt {
            gate: self,
            client: key,
            loopback,
            at: now,
        })
    }

    #[cfg(test)]
    fn followed(&self) -> usize {
        let now = self.now();
        let mut inner = self.lock();
        inner.prune(now, self.window, true);
        inner.clients.len()
    }
}

impl Inner {
    /// The budget the clients on loopback (`loopback`) or all others count against.
    fn budget(&mut self, loopback: bool) -> &mut Budget {
        if loopback {
            &mut self.loopback
        } else {
            &mut self.others
        }
    }

    /// Forgets the clients whose failures all aged out, at most every [`PRUNE_EVERY`] (or at once with `now`).
    fn prune(&mut self, now: Instant, window: Duration, at_once: bool) {
        if at_once || now.duration_since(self.pruned) >= PRUNE_EVERY {
            self.clients
                .retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < window));
            self.pruned = now;
        }
    }

    /// Takes back one reservation made at `at` from its budget's count (the loopback one with `loopback`), and
    /// the client's (`client`).
    fn release(&mut self, loopback: bool, client: Option<&Client>, at: Instant) {
        let budget = self.budget(loopback);
        if let Some(i) = budget.all.iter().rposition(|t| *t == at) {
            budget.all.remove(i);
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
        inner.release(self.loopback, None, self.at);
        inner.clients.remove(&self.client);
    }

    /// The password was wrong: the reservation stands as a failure. Reaching its budget refuses every `auth` of
    /// the clients of that budget for a window from now.
    pub(crate) fn failed(self) -> Failure {
        let now = self.gate.now();
        let mut inner = self.gate.lock();
        let client = inner.clients.get(&self.client).map_or(0, VecDeque::len);
        let budget = inner.budget(self.loopback);
        let listener = budget.all.len();
        let mut closed_for = None;
        if listener >= self.gate.per_listener && budget.closed_until.is_none_or(|u| u <= now) {
            budget.closed_until = Some(now + self.gate.window);
            closed_for = Some(self.gate.window);
        }
        Failure {
            client,
            listener,
            loopback: self.loopback,
            closed_for,
        }
    }

    /// The attempt ended without a verdict (never looked at): its reservation is taken back, as if it never came.
    #[cfg(test)]
    fn abandoned(self) {
        let mut inner = self.gate.lock();
        let client = self.client;
        inner.release(self.loopback, Some(&client), self.at);
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
        assert_eq!(g.lock().others.all.len(), 3);
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
            let Err(Refusal::Listener {
                wait,
                loopback: false,
            }) = g.begin(who)
            else {
                panic!("{who} let through");
            };
            assert_eq!(wait, Duration::from_secs(60));
        }
        // For a whole window from the failure that spent it.
        g.advance(Duration::from_secs(59));
        assert!(g.begin(ip("192.0.2.1")).is_err());
        g.advance(Duration::from_secs(1));
        g.begin(ip("192.0.2.1")).expect("open again").succeeded();
    }

    /// Spends the budget of the clients not on loopback: one wrong password from each of `n` /64s.
    fn spend_from_afar(g: &AuthGate, n: usize) {
        for i in 0..n {
            let f = g
                .begin(ip(&format!("2001:db8:7:{i:x}::1")))
                .expect("within the budget")
                .failed();
            assert!(!f.loopback);
        }
    }

    /// Once guessers elsewhere spent the listener's budget, a client on loopback (IPv4, IPv6, IPv4-mapped) with the
    /// right password still gets in, while every other client, a local user of a Unix socket included, is refused.
    #[test]
    fn guessers_elsewhere_do_not_lock_out_a_client_on_loopback() {
        let g = gate(5, 10, 1000);
        spend_from_afar(&g, 10);
        for who in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            g.begin(ip(who))
                .unwrap_or_else(|r| panic!("{who} refused: {r:?}"))
                .succeeded();
        }
        for who in [
            ip("2001:db8:8::1"),
            ip("192.0.2.1"),
            ip("::ffff:192.0.2.1"),
            ip("::2"),
            Client::LocalUser(Some(0)),
            Client::LocalUser(None),
        ] {
            assert!(
                matches!(
                    g.begin(who),
                    Err(Refusal::Listener {
                        loopback: false,
                        ..
                    })
                ),
                "{who} let through"
            );
        }
    }

    /// A client on loopback is still locked out by its own wrong passwords, which spend nothing of the budget of the
    /// clients elsewhere (nor close it, though it is full); other loopback addresses are not locked with it.
    #[test]
    fn a_client_on_loopback_is_locked_out_by_its_own_wrong_passwords() {
        let g = gate(3, 10, 1000);
        spend_from_afar(&g, 9);
        let me = ip("127.0.0.1");
        for n in 1..=3 {
            let f = g.begin(me).expect("let through").failed();
            assert_eq!((f.client, f.listener, f.loopback), (n, n, true));
            assert_eq!(f.closed_for, None);
        }
        let Err(Refusal::Client { wait }) = g.begin(me) else {
            panic!("not locked out");
        };
        assert_eq!(wait, Duration::from_secs(60));
        g.begin(ip("127.0.0.2"))
            .expect("another address")
            .succeeded();
        // The clients elsewhere have one wrong password left.
        g.begin(ip("192.0.2.1")).expect("one left").failed();
        assert!(g.begin(ip("192.0.2.2")).is_err());
        // The lockout ends a window after the last wrong password.
        g.advance(Duration::from_secs(59));
        assert!(matches!(g.begin(me), Err(Refusal::Client { .. })));
        g.advance(Duration::from_secs(1));
        g.begin(me).expect("lockout over").succeeded();
    }

    /// Wrong passwords over loopback, spread over its addresses, spend a budget of their own: then every client on
    /// loopback is refused for a window, and the clients elsewhere are not.
    #[test]
    fn loopback_clients_have_a_budget_of_their_own() {
        let g = gate(5, 10, 1000);
        let mut closed = Vec::new();
        for i in 0..10u8 {
            let f = g
                .begin(ip(&format!("127.0.1.{i}")))
                .expect("within the budget")
                .failed();
            assert_eq!(
                (f.client, f.listener, f.loopback),
                (1, usize::from(i) + 1, true)
            );
            closed.extend(f.closed_for);
        }
        assert_eq!(closed, [Duration::from_secs(60)]);
        for who in ["127.0.0.1", "::1", "::ffff:127.0.0.9"] {
            assert!(
                matches!(
                    g.begin(ip(who)),
                    Err(Refusal::Listener { loopback: true, .. })
                ),
                "{who} let through"
            );
        }
        g.begin(ip("192.0.2.1")).expect("elsewhere").succeeded();
        g.begin(Client::LocalUser(Some(0)))
            .expect("a local user")
            .failed();
        g.advance(Duration::from_secs(60));
        g.begin(ip("127.0.0.1")).expect("open again").succeeded();
    }

    /// Beyond the clients it follows, a new client on loopback is not counted on its own, but against the loopback
    /// budget, so its guesses still run out.
    #[test]
    fn loopback_clients_beyond_those_followed_still_count() {
        let g = gate(5, 20, 4);
        for i in 0..4 {
            g.begin(ip(&format!("192.0.2.{i}"))).unwrap().failed();
        }
        let mut n = 0;
        while g.begin(ip("127.0.0.1")).map(Attempt::failed).is_ok() {
            n += 1;
            assert!(n <= 20, "never refused");
        }
        assert_eq!(n, 20);
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
            Err(Refusal::Listener {
                loopback: false,
                ..
            })
        ));
        // Attempts under way over loopback count against the loopback budget only.
        let mine = g.begin(ip("::1")).expect("loopback");
        for a in pending {
            a.abandoned();
        }
        assert!(g.begin(ip("192.0.2.200")).is_ok());
        mine.abandoned();
        assert!(g.lock().loopback.all.is_empty());
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
