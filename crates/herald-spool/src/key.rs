//! Spool keys: unique per notification and ordered by acceptance, also across restarts.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The key of one spooled notification. The high 64 bits are the start time (unix ms) of the process that accepted
/// it, the low 64 bits a counter within that process, so keys sort in order of acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpoolKey(pub u128);

impl SpoolKey {
    /// Big-endian bytes: their byte order is the key order.
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(bytes: [u8; 16]) -> SpoolKey {
        SpoolKey(u128::from_be_bytes(bytes))
    }

    /// The epoch part (unix ms of the process start that issued the key).
    pub fn epoch_ms(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl fmt::Display for SpoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Issues [`SpoolKey`]s: greater than every key already in the store and than those of earlier runs.
#[derive(Debug)]
pub struct KeyGenerator {
    epoch: u64,
    counter: AtomicU64,
}

impl KeyGenerator {
    /// A generator whose keys are all above `floor` (the greatest key already stored, if any).
    pub fn new(floor: Option<SpoolKey>) -> KeyGenerator {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let above_floor = floor.map_or(0, |k| k.epoch_ms().saturating_add(1));
        KeyGenerator {
            epoch: now_ms.max(above_floor),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> SpoolKey {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        SpoolKey(((self.epoch as u128) << 64) | n as u128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_increase_and_stay_above_the_floor() {
        let far_future = SpoolKey(((u64::MAX / 2) as u128) << 64 | 77);
        let g = KeyGenerator::new(Some(far_future));
        let a = g.next();
        let b = g.next();
        assert!(a > far_future);
        assert!(b > a);
        assert_eq!(a.epoch_ms(), u64::MAX / 2 + 1);
    }

    #[test]
    fn byte_order_is_key_order() {
        let a = SpoolKey(5);
        let b = SpoolKey(1 << 70);
        assert!(a.to_be_bytes() < b.to_be_bytes());
        assert_eq!(SpoolKey::from_be_bytes(b.to_be_bytes()), b);
        assert_eq!(a.to_string(), "00000000000000000000000000000005");
    }
}
