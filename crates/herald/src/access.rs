//! What a client presents to prove who it is: API keys and the console password, compared without telling a guesser
//! anything by the time the comparison takes, and the lockout of an address that keeps guessing.
//!
//! Every listener that takes a secret uses both: the REST guard and the dashboard share one [`GuessThrottle`] per
//! HTTP listener, locking an address out after `auth_failure_limit` wrong keys within [`GUESS_WINDOW`] (0: never);
//! the console's control listener has its own, with the fixed [`MAX_GUESSES`]. A locked-out address is refused
//! (right secret or wrong) until [`GUESS_WINDOW`] has passed since its last wrong one. Wrong keys are forgotten only
//! as they age: a right key does not wipe them (else one valid key would let its holder guess others without limit),
//! except on the console, whose single password proves everything a guess could find.

use std::collections::HashMap;
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
/// Addresses a throttle follows at once. Beyond it, wrong secrets from new addresses are not counted (the memory
/// stays bounded however many addresses a guesser uses; such a guesser is not locked out).
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

/// Recent wrong secrets per client address (`None`: a Unix socket client). IPv6 addresses count per /64, the
/// block one host is usually given, so that a guesser cannot start afresh from each of its addresses.
#[derive(Debug)]
pub struct GuessThrottle {
    inner: Mutex<Inner>,
    /// Addresses followed, readable without the lock: with none (the usual case), the checks every request makes
    /// take no lock.
    tracked: AtomicUsize,
}

#[derive(Debug)]
struct Inner {
    failures: HashMap<Option<IpAddr>, Vec<Instant>>,
    pruned: Instant,
}

impl Default for GuessThrottle {
    fn default() -> Self {
        GuessThrottle {
            inner: Mutex::new(Inner {
                failures: HashMap::new(),
                pruned: Instant::now(),
            }),
            tracked: AtomicUsize::new(0),
        }
    }
}

/// The key a client's failures are counted under.
fn bucket(client: Option<IpAddr>) -> Option<IpAddr> {
    client.map(|ip| match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    })
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

    /// How long `client` must still wait before it may present a secret, if it sent `limit` wrong ones within the
    /// window (`limit` 0: never locked).
    pub fn locked(&self, client: Option<IpAddr>, limit: usize) -> Option<Duration> {
        if limit == 0 || self.tracked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inner = self.lock();
        inner.prune(false);
        let key = bucket(client);
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

    /// Notes a wrong secret from `client`; returns how many it sent within the window (counting at most `keep`,
    /// the largest limit it is checked against).
    pub fn failed(&self, client: Option<IpAddr>, keep: usize) -> usize {
        let mut inner = self.lock();
        let key = bucket(client);
        if !inner.failures.contains_key(&key) && inner.failures.len() >= MAX_TRACKED_ADDRESSES {
            inner.prune(false);
            if inner.failures.len() >= MAX_TRACKED_ADDRESSES {
                return 1;
            }
        }
        let recent = inner.failures.entry(key).or_default();
        recent.retain(|t| t.elapsed() < GUESS_WINDOW);
        recent.push(Instant::now());
        let keep = keep.max(1);
        if recent.len() > keep {
            recent.drain(..recent.len() - keep);
        }
        let n = recent.len();
        self.tracked.store(inner.failures.len(), Ordering::Release);
        n
    }

    /// A right password on the console: the address starts again from zero.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.failures.remove(&bucket(client));
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
        // A higher limit is not reached yet; a limit of 0 never locks.
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
    fn the_addresses_followed_are_bounded() {
        let t = GuessThrottle::default();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 + 10 {
            t.failed(Some(IpAddr::V4(i.into())), MAX_GUESSES);
        }
        assert_eq!(t.followed(), MAX_TRACKED_ADDRESSES);
    }
}
