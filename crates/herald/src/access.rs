//! What a client presents to prove who it is: API keys and the console password, compared without telling a guesser
//! anything by the time the comparison takes, and the lockout of an address that keeps guessing.
//!
//! Every listener that takes a secret uses both: the REST guard and the dashboard share one [`GuessThrottle`] per
//! HTTP listener; the console's control listener has its own. After [`MAX_GUESSES`] wrong secrets from one address
//! within [`GUESS_WINDOW`], that address is refused (right secret or wrong) until [`GUESS_WINDOW`] has passed since
//! its last wrong one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Wrong secrets one client address may send within [`GUESS_WINDOW`] before it is locked out.
pub const MAX_GUESSES: usize = 5;
/// The window over which wrong secrets are counted, and how long a lockout lasts after the last one.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses a throttle follows at once. Beyond it, wrong secrets from new addresses are not counted (and the
/// memory stays bounded however many addresses a guesser uses).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

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
#[derive(Debug, Default)]
pub struct GuessThrottle {
    failures: Mutex<HashMap<Option<IpAddr>, Vec<Instant>>>,
    /// Addresses in `failures`, readable without the lock: with none (the usual case), the checks every request
    /// makes take no lock.
    tracked: AtomicUsize,
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

impl GuessThrottle {
    /// How long `client` must still wait before it may present a secret, if it is locked out.
    pub fn locked(&self, client: Option<IpAddr>) -> Option<Duration> {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = bucket(client);
        let recent = failures.get_mut(&key)?;
        recent.retain(|t| t.elapsed() < GUESS_WINDOW);
        let Some(&last) = recent.last() else {
            failures.remove(&key);
            self.tracked.store(failures.len(), Ordering::Release);
            return None;
        };
        (recent.len() >= MAX_GUESSES).then(|| GUESS_WINDOW.saturating_sub(last.elapsed()))
    }

    /// Notes a wrong secret from `client`; returns how many it sent within the window.
    pub fn failed(&self, client: Option<IpAddr>) -> usize {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = bucket(client);
        if !failures.contains_key(&key) && failures.len() >= MAX_TRACKED_ADDRESSES {
            // Forget addresses that stopped trying, so the map stays small; only when it is full, so that a wrong
            // secret costs a lookup, not a pass over every address.
            failures.retain(|_, v| v.last().is_some_and(|t| t.elapsed() < GUESS_WINDOW));
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                self.tracked.store(failures.len(), Ordering::Release);
                return 1;
            }
        }
        let recent = failures.entry(key).or_default();
        recent.retain(|t| t.elapsed() < GUESS_WINDOW);
        recent.push(Instant::now());
        // Only the last MAX_GUESSES matter for the lockout.
        if recent.len() > MAX_GUESSES {
            recent.drain(..recent.len() - MAX_GUESSES);
        }
        let n = recent.len();
        self.tracked.store(failures.len(), Ordering::Release);
        n
    }

    /// A right secret: the address starts again from zero.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&bucket(client));
        self.tracked.store(failures.len(), Ordering::Release);
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
            assert_eq!(t.failed(ip), n);
            assert_eq!(t.locked(ip), None);
        }
        assert_eq!(t.failed(ip), MAX_GUESSES);
        let wait = t
            .locked(ip)
            .expect("locked after MAX_GUESSES wrong secrets");
        assert!(wait <= GUESS_WINDOW && wait > Duration::ZERO);
        assert_eq!(t.locked(other), None, "another address is not locked");
        // Further failures keep the count at the bound.
        assert_eq!(t.failed(ip), MAX_GUESSES);
        t.succeeded(ip);
        assert_eq!(t.locked(ip), None);
    }

    #[test]
    fn ipv6_addresses_of_one_64_block_count_together() {
        let t = GuessThrottle::default();
        for i in 0..MAX_GUESSES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            t.failed(Some(ip));
        }
        assert!(
            t.locked(Some("2001:db8:1:2::ffff".parse().unwrap()))
                .is_some()
        );
        assert_eq!(t.locked(Some("2001:db8:1:3::1".parse().unwrap())), None);
    }

    #[test]
    fn the_addresses_followed_are_bounded() {
        let t = GuessThrottle::default();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 + 10 {
            t.failed(Some(IpAddr::V4(i.into())));
        }
        let followed = t.failures.lock().unwrap().len();
        assert_eq!(followed, MAX_TRACKED_ADDRESSES);
    }
}
