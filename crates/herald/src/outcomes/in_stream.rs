//! What a node of the JetStream spool remembers of the notifications it put in the stream and no queue of its own
//! holds: those it accepted (until a node pulls them) and those it gave back for a later retry (until a node pulls
//! them again). Without it such a notification is in no node's status book, and a lookup would answer `404 unknown`
//! for as long as it waits in the stream, which is a whole retry interval after a transient failure.
//!
//! The [`super::book::StatusBook`] keeps one [`InStream`] per shard. An entry leaves when this node queues the
//! notification (the book then follows it), when it is older than `outcome_retention` (by then the final outcome of
//! the node that delivered it is gone too, so no answer older than the retention is kept), or when the shard holds
//! [`SHARD_CAPACITY`] newer ones: a node remembers the last [`CAPACITY`] notifications it put in the stream. What it
//! remembers is provisional: another node may have pulled the notification since, so a lookup asks the other nodes
//! too and takes what they say over it ([`super::peers::merge`]).

use std::collections::VecDeque;

use herald_spool::OutcomeKey;
use rustc_hash::FxHashMap;

/// The most notifications a node remembers having put in the stream.
pub const CAPACITY: usize = 256 * 1024;

/// [`CAPACITY`] over the book's shards.
pub const SHARD_CAPACITY: usize = CAPACITY / 32;

/// One shard's notifications put in the stream (see the module documentation).
pub struct InStream<V> {
    /// Key -> (stamp, when it was put in Unix seconds, what is kept of it).
    entries: FxHashMap<OutcomeKey, (u64, u64, V)>,
    /// Keys in the order they were put, with their stamp and time: the oldest give way first. A key taken out
    /// early stays here until its turn comes, told apart from a newer put of the same key by its stamp.
    order: VecDeque<(OutcomeKey, u64, u64)>,
    stamp: u64,
    capacity: usize,
}

impl<V> InStream<V> {
    pub fn new(capacity: usize) -> InStream<V> {
        InStream {
            entries: FxHashMap::default(),
            order: VecDeque::new(),
            stamp: 0,
            capacity: capacity.max(1),
        }
    }

    /// Remembers `value` for `key`, put in the stream at `now` (Unix seconds), replacing what was kept of it;
    /// forgets what is older than `max_age` seconds and the oldest beyond the capacity.
    pub fn put(&mut self, key: OutcomeKey, value: V, now: u64, max_age: u64) {
        self.stamp += 1;
        self.entries.insert(key, (self.stamp, now, value));
        self.order.push_back((key, self.stamp, now));
        self.trim(now, max_age);
    }

    /// Takes what is kept of `key` (this node queues it now, or finished it).
    pub fn take(&mut self, key: &OutcomeKey) -> Option<V> {
        self.entries.remove(key).map(|(_, _, v)| v)
    }

    /// What is kept of `key`, unless it is older than `max_age` seconds at `now`.
    pub fn get(&self, key: &OutcomeKey, now: u64, max_age: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, at, _)| now.saturating_sub(*at) <= max_age)
            .map(|(_, _, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn trim(&mut self, now: u64, max_age: u64) {
        while let Some(&(key, stamp, at)) = self.order.front() {
            if self.order.len() <= self.capacity && now.saturating_sub(at) <= max_age {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|(s, _, _)| *s == stamp) {
                self.entries.remove(&key);
            }
        }
        if self.order.capacity() > 4 * self.capacity.max(64) && self.order.len() < self.capacity {
            self.order.shrink_to(self.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> OutcomeKey {
        [n; 16]
    }

    #[test]
    fn the_oldest_give_way_beyond_the_capacity() {
        let mut s = InStream::new(3);
        for n in 0..5 {
            s.put(key(n), n, 100, 3600);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&key(0), 100, 3600).is_none());
        assert!(s.get(&key(1), 100, 3600).is_none());
        assert_eq!(s.get(&key(4), 100, 3600), Some(&4));
    }

    #[test]
    fn an_entry_older_than_the_age_is_not_answered_and_goes_at_the_next_put() {
        let mut s = InStream::new(10);
        s.put(key(1), 1, 100, 60);
        assert_eq!(s.get(&key(1), 160, 60), Some(&1));
        assert!(s.get(&key(1), 161, 60).is_none());
        s.put(key(2), 2, 161, 60);
        assert_eq!(s.len(), 1);
    }

    /// A key put again after it was taken keeps its newer entry when the older one's turn to give way comes.
    #[test]
    fn a_key_put_again_is_not_forgotten_with_its_older_entry() {
        let mut s = InStream::new(2);
        s.put(key(1), 1, 100, 3600);
        assert_eq!(s.take(&key(1)), Some(1));
        s.put(key(1), 11, 100, 3600);
        s.put(key(2), 2, 100, 3600);
        // The first put of key 1 gives way; its second stays.
        assert_eq!(s.get(&key(1), 100, 3600), Some(&11));
        assert_eq!(s.get(&key(2), 100, 3600), Some(&2));
        s.put(key(3), 3, 100, 3600);
        assert!(s.get(&key(1), 100, 3600).is_none());
        assert_eq!(s.len(), 2);
    }
}
