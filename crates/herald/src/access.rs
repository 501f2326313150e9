//! What a client presents to prove who it is: API keys and the console password, compared without telling a guesser
//! anything by the time the comparison takes, and the lockout of a client that keeps guessing.
//!
//! Every listener that takes a secret uses both: the REST guard and the dashboard share one [`GuessThrottle`] per
//! HTTP listener, locking an address out after `auth_failure_limit` wrong keys within [`GUESS_WINDOW`] (0: never);
//! the console's control listener has its own, with the fixed [`MAX_GUESSES`], where a Unix socket client is judged
//! by its user id (each local user has a count of its own). A locked-out client is refused
//! (right secret or wrong) until [`GUESS_WINDOW`] has passed since its last wrong one. Wrong keys are forgotten only
//! as they age: a right key does not wipe them (else one valid key would let its holder guess others without limit),
//! except on the console, whose single password proves everything a guess could find.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Wrong secrets one client address may send within [`GUESS_WINDOW`] before it is locked out of the console (and
/// the default of `auth_failure_limit`).
pub const MAX_GUESSES: usize = 5;
/// The window over which wrong secrets are counted, and how long a lockout lasts after the last one.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses (each with a limit it is judged by) a throttle follows at once. Beyond it, wrong secrets from new
/// addresses are not counted (the memory stays bounded however many addresses a guesser uses; such a guesser is not
/// locked out).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;
/// How often, at most, the addresses that stopped guessing are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Whether `presented` is the secret `expected`, in a time that depends neither on where they differ nor on their
/// lengths: both are hashed and the digests compared in full.
pub fn same_secret(expected: &[u8], presented: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(expected), Sha256::digest(presented));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Recent wrong secrets per [`Client`] (a network client's address, a Unix socket client's user), each judged by its
/// own limit.
///
/// IPv6 addresses count per /64, the block one host is usually given, so that a guesser cannot start afresh from
/// each of its addresses. Wrong secrets are counted apart per limit as well: the addresses of one block checked
/// against the same limit count together, and one that a `peer` stanza gives another `auth_failure_limit` counts
/// only with those sharing it. So in a /64 holding a proxy (lockout off, or a high limit) and other clients with a
/// low one, a client is locked after its limit of wrong secrets from the addresses judged like it, whatever the
/// proxy lets through, and the proxy's count is neither raised by the others' guesses nor cut short by their lower
/// limit. Wrong secrets under limit 0 are not recorded at all. An address given another limit (by a reload) starts
/// afresh under it.
#[derive(Debug)]
pub struct GuessThrottle {
    inner: Mutex<Inner>,
    /// Addresses followed, readable without the lock: with none (the usual case), the checks every request makes
    /// take no lock.
    tracked: AtomicUsize,
}

#[derive(Debug)]
struct Inner {
    failures: BTreeMap<Key, Vec<Instant>>,
    pruned: Instant,
}

impl Default for GuessThrottle {
    fn default() -> Self {
        GuessThrottle {
            inner: Mutex::new(Inner {
                failures: BTreeMap::new(),
                pruned: Instant::now(),
            }),
            tracked: AtomicUsize::new(0),
        }
    }
}

/// Who wrong secrets are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Client {
    /// A network client, by its address (an IPv6 one counts with the rest of its /64).
    Address(IpAddr),
    /// A Unix socket client, by the user id its connection carries; `None` when it could not be read (such clients
    /// count together).
    LocalUser(Option<u32>),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        Client::Address(ip)
    }
}

/// A client address, or `None` for a Unix socket client whose user is not known.
impl From<Option<IpAddr>> for Client {
    fn from(ip: Option<IpAddr>) -> Client {
        ip.map_or(Client::LocalUser(None), Client::Address)
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Address(ip) => write!(f, "{ip}"),
            Client::LocalUser(Some(uid)) => write!(f, "local user uid={uid}"),
            Client::LocalUser(None) => f.write_str("a Unix socket client"),
        }
    }
}

impl Client {
    /// What this client's failures are counted under: its address's block, or its user.
    fn bucket(self) -> Client {
        match self {
            Client::Address(ip) => Client::Address(block(ip)),
            local => local,
        }
    }
}

/// What failures are counted under: the client (an address's /64 for IPv6) and the limit it is judged by.
type Key = (Client, usize);

/// The address a client's failures are counted under: an IPv4 address as it is, an IPv6 address as its /64
/// (callers pass IPv4-mapped addresses already canonicalised). The connection caps count per the same.
pub(crate) fn bucket(client: Option<IpAddr>) -> Option<IpAddr> {
    client.map(block)
}

/// An IPv4 address as it is, an IPv6 address as its /64.
fn block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

impl Inner {
    /// Forgets the addresses whose wrong secrets all aged out, at most every [`PRUNE_EVERY`] (or at once with
    /// `now`), so that one pass over the map is not paid per request.
    fn prune(&mut self, now: bool) {
        if now || self.pruned.elapsed() >= PRUNE_EVERY {
            self.failures
                .retain(|_, v| v.last().is_some_and(|t| t.elapsed() < GUESS_WINDOW));
            self.pruned = Instant::now();
        }
    }
}

impl GuessThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `client` must still wait before it may present a secret, if it (or its block, under the same
    /// limit) sent `limit` wrong ones within the window (`limit` 0: never locked).
    pub fn locked(&self, client: impl Into<Client>, limit: usize) -> Option<Duration> {
        if limit == 0 || self.tracked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inner = self.lock();
        inner.prune(false);
        let key = (client.into().bucket(), limit);
        let wait = inner.failures.get_mut(&key).and_then(|recent| {
            recent.retain(|t| t.elapsed() < GUESS_WINDOW);
            let last = *recent.last()?;
            (recent.len() >= limit).then(|| GUESS_WINDOW.saturating_sub(last.elapsed()))
        });
        if inner.failures.get(&key).is_some_and(Vec::is_empty) {
            inner.failures.remove(&key);
        }
        self.tracked.store(inner.failures.len(), Ordering::Release);
        wait
    }

    /// Notes a wrong secret from `client`, which is checked against `limit`; returns how many it (or its block,
    /// under the same limit) sent within the window, counting at most `limit`. Under `limit` 0 nothing is recorded
    /// (the checks stay lock-free) and the count is 1, this one.
    pub fn failed(&self, client: impl Into<Client>, limit: usize) -> usize {
        if limit == 0 {
            return 1;
        }
        let mut inner = self.lock();
        let key = (client.into().bucket(), limit);
        if !inner.failures.contains_key(&key) && inner.failures.len() >= MAX_TRACKED_ADDRESSES {
            inner.prune(false);
            if inner.failures.len() >= MAX_TRACKED_ADDRESSES {
                return 1;
            }
        }
        let recent = inner.failures.entry(key).or_default();
        recent.retain(|t| t.elapsed() < GUESS_WINDOW);
        recent.push(Instant::now());
        if recent.len() > limit {
            recent.drain(..recent.len() - limit);
        }
        let n = recent.len();
        self.tracked.store(inner.failures.len(), Ordering::Release);
        n
    }

    /// A right password on the console: the client (an address's block, under every limit) starts again from zero.
    pub fn succeeded(&self, client: impl Into<Client>) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut inner = self.lock();
        let block = client.into().bucket();
        let keys: Vec<Key> = inner
            .failures
            .range((block, 0)..=(block, usize::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            inner.failures.remove(&key);
        }
        self.tracked.store(inner.failures.len(), Ordering::Release);
    }

    #[cfg(test)]
    fn followed(&self) -> usize {
        let mut inner = self.lock();
        inner.prune(true);
        inner.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly_whatever_their_lengths() {
        assert!(same_secret(b"secret", b"secret"));
        assert!(!same_secret(b"secret", b"secreT"));
        assert!(!same_secret(b"secret", b"secrets"));
        assert!(!same_secret(b"secret", b""));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn an_address_is_locked_after_too_many_wrong_secrets_and_freed_by_a_right_one() {
        let t = GuessThrottle::default();
        let ip: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let other: Option<IpAddr> = Some("192.0.2.8".parse().unwrap());
        for n in 1..MAX_GUESSES {
            assert_eq!(t.failed(ip, MAX_GUESSES), n);
            assert_eq!(t.locked(ip, MAX_GUESSES), None);
        }
        assert_eq!(t.failed(ip, MAX_GUESSES), MAX_GUESSES);
        let wait = t
            .locked(ip, MAX_GUESSES)
            .expect("locked after MAX_GUESSES wrong secrets");
        assert!(wait <= GUESS_WINDOW && wait > Duration::ZERO);
        assert_eq!(
            t.locked(other, MAX_GUESSES),
            None,
            "another address is not locked"
        );
        // Under another limit the address has a count of its own; a limit of 0 never locks.
        assert_eq!(t.locked(ip, MAX_GUESSES + 1), None);
        assert_eq!(t.locked(ip, 0), None);
        // Further failures keep the count at the bound.
        assert_eq!(t.failed(ip, MAX_GUESSES), MAX_GUESSES);
        t.succeeded(ip);
        assert_eq!(t.locked(ip, MAX_GUESSES), None);
    }

    #[test]
    fn ipv6_addresses_of_one_64_block_count_together() {
        let t = GuessThrottle::default();
        for i in 0..MAX_GUESSES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            t.failed(Some(ip), MAX_GUESSES);
        }
        let same_block = Some("2001:db8:1:2::ffff".parse().unwrap());
        assert!(t.locked(same_block, MAX_GUESSES).is_some());
        let next_block = Some("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(t.locked(next_block, MAX_GUESSES), None);
    }

    #[test]
    fn addresses_of_one_block_with_other_limits_are_each_judged_by_their_own() {
        let t = GuessThrottle::default();
        let low: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        let high: Option<IpAddr> = Some("2001:db8:1:2::2".parse().unwrap());
        let low_too: Option<IpAddr> = Some("2001:db8:1:2::3".parse().unwrap());
        for n in 1..10 {
            assert_eq!(t.failed(high, 10), n);
        }
        assert_eq!(t.locked(high, 10), None);
        assert_eq!(
            t.locked(low, 2),
            None,
            "the higher limit's wrong secrets do not count against the lower one"
        );
        assert_eq!(t.failed(low, 2), 1);
        assert_eq!(t.locked(low, 2), None);
        assert_eq!(t.failed(low, 2), 2);
        assert!(t.locked(low, 2).is_some(), "locked after 2 of its own");
        assert!(
            t.locked(low_too, 2).is_some(),
            "the block counts together under one limit"
        );
        assert_eq!(
            t.locked(high, 10),
            None,
            "the lower limit's wrong secrets do not count against the higher one"
        );
        assert_eq!(
            t.failed(high, 10),
            10,
            "nor does the lower limit cut the higher one's count short"
        );
        assert!(t.locked(high, 10).is_some());
        // Further failures under the lower limit keep its count at its bound, the higher one's untouched.
        assert_eq!(t.failed(low, 2), 2);
        assert_eq!(t.failed(high, 10), 10);
    }

    #[test]
    fn wrong_secrets_under_limit_0_are_not_recorded() {
        let t = GuessThrottle::default();
        let proxy: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        let neighbour: Option<IpAddr> = Some("2001:db8:1:2::2".parse().unwrap());
        for _ in 0..100 {
            assert_eq!(t.failed(proxy, 0), 1);
        }
        assert_eq!(t.locked(proxy, 0), None);
        assert_eq!(
            t.followed(),
            0,
            "nothing followed: the checks stay lock-free"
        );
        assert_eq!(t.failed(neighbour, 2), 1);
        assert_eq!(
            t.locked(neighbour, 2),
            None,
            "the proxy's wrong secrets do not lock its neighbour out"
        );
    }

    #[test]
    fn a_right_password_clears_the_block_under_every_limit() {
        let t = GuessThrottle::default();
        let ip: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        let same_block: Option<IpAddr> = Some("2001:db8:1:2::2".parse().unwrap());
        let next_block: Option<IpAddr> = Some("2001:db8:1:3::1".parse().unwrap());
        for _ in 0..2 {
            t.failed(ip, 2);
            t.failed(same_block, 3);
            t.failed(next_block, 2);
        }
        t.failed(same_block, 3);
        assert!(t.locked(ip, 2).is_some() && t.locked(same_block, 3).is_some());
        t.succeeded(ip);
        assert_eq!(t.locked(ip, 2), None);
        assert_eq!(t.locked(same_block, 3), None);
        assert!(
            t.locked(next_block, 2).is_some(),
            "another block keeps its count"
        );
        assert_eq!(t.followed(), 1);
    }

    /// Unix socket clients are counted by user: one local user's wrong passwords lock that user out, not the
    /// others, and none of them counts with a network address.
    #[test]
    fn local_users_are_each_judged_apart() {
        let t = GuessThrottle::default();
        let guesser = Client::LocalUser(Some(1001));
        let operator = Client::LocalUser(Some(1000));
        for _ in 0..MAX_GUESSES {
            t.failed(guesser, MAX_GUESSES);
        }
        assert!(t.locked(guesser, MAX_GUESSES).is_some());
        assert_eq!(
            t.locked(operator, MAX_GUESSES),
            None,
            "another local user is not locked out"
        );
        assert_eq!(t.locked(Client::LocalUser(None), MAX_GUESSES), None);
        assert_eq!(
            t.locked(Some("192.0.2.7".parse::<IpAddr>().unwrap()), MAX_GUESSES),
            None
        );
        t.succeeded(operator);
        assert!(
            t.locked(guesser, MAX_GUESSES).is_some(),
            "another user's right password does not free the guesser"
        );
        t.succeeded(guesser);
        assert_eq!(t.locked(guesser, MAX_GUESSES), None);
        assert_eq!(
            Client::LocalUser(Some(1000)).to_string(),
            "local user uid=1000"
        );
    }

    #[test]
    fn the_addresses_followed_are_bounded() {
        let t = GuessThrottle::default();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 + 10 {
            t.failed(Some(IpAddr::V4(i.into())), MAX_GUESSES);
        }
        assert_eq!(t.followed(), MAX_TRACKED_ADDRESSES);
    }
}
