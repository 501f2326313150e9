//! What a node of the JetStream spool remembers of the notifications it put in the stream and no queue of its own
//! holds: those it accepted (until a node pulls them) and those it gave back for a later retry (until a node pulls
//! them again). Without it such a notification is in no node's status book, and a lookup would answer `404 unknown`
//! for as long as it waits in the stream, which is a whole retry interval after a transient failure.
//!
//! The [`super::book::StatusBook`] keeps one [`InStream`] per shard, in two parts, so that a busy node's acceptances
//! never push out the retries it gave back:
//! - **accepted** notifications, normally pulled by some node within moments: each is answered for [`GRACE`] after
//!   it was put in the stream;
//! - **handed back** ones, with their attempts, last reason and next attempt: each is answered until [`GRACE`] after
//!   its next attempt was due.
//!
//! Neither is answered longer than `outcome_retention`. An entry leaves when this node queues the notification
//! (the book then follows it), when its time is over, or when its part of the shard holds its capacity of newer ones
//! ([`ACCEPTED_CAPACITY`], [`HANDED_BACK_CAPACITY`] over all shards). What a node remembers is provisional: another
//! node may have pulled the notification since, so a lookup asks the other nodes too and takes what they say over it
//! ([`super::peers::settle`]).

use std::collections::VecDeque;
use std::time::Duration;

use herald_spool::OutcomeKey;
use rustc_hash::FxHashMap;

/// Accepted notifications a node remembers having put in the stream, at most.
pub const ACCEPTED_CAPACITY: usize = 64 * 1024;

/// Notifications given back for a retry that a node remembers, at most.
pub const HANDED_BACK_CAPACITY: usize = 128 * 1024;

/// How long after it was due to be pulled (at once for an accepted notification, at its next attempt for one given
/// back) what a node remembers of a notification is answered: a stream with a backlog takes a while to reach it; past
/// that, a node that pulled it and does not answer (stopped, unreachable) cannot leave a stale `queued` for longer.
pub const GRACE: Duration = Duration::from_secs(600);

/// One shard's notifications put in the stream (see the module documentation).
pub struct InStream<V> {
    accepted: Part<V>,
    handed_back: Part<V>,
}

impl<V> InStream<V> {
    /// The part of one of `shards` shards.
    pub fn new(shards: usize) -> InStream<V> {
        let shards = shards.max(1);
        InStream {
            accepted: Part::new(ACCEPTED_CAPACITY.div_ceil(shards)),
            handed_back: Part::new(HANDED_BACK_CAPACITY.div_ceil(shards)),
        }
    }

    /// Remembers `value` for `key`, accepted into the stream at `now` (Unix seconds), answered until `until`;
    /// nothing when this node already remembers the notification (it pulled it and gave it back before the
    /// acceptance was recorded: that says more).
    pub fn accepted(&mut self, key: OutcomeKey, value: V, now: u64, until: u64) {
        if self.handed_back.entries.contains_key(&key) || self.accepted.entries.contains_key(&key) {
            return;
        }
        self.accepted.put(key, value, now, until);
    }

    /// Remembers `value` for `key`, given back to the stream at `now` (Unix seconds) for a retry, answered until
    /// `until`, in place of what was kept of it.
    pub fn handed_back(&mut self, key: OutcomeKey, value: V, now: u64, until: u64) {
        self.accepted.entries.remove(&key);
        self.handed_back.put(key, value, now, until);
    }

    /// Takes what is kept of `key` (this node queues it now).
    pub fn take(&mut self, key: &OutcomeKey) -> Option<V> {
        let handed_back = self.handed_back.entries.remove(key).map(|(_, _, v)| v);
        let accepted = self.accepted.entries.remove(key).map(|(_, _, v)| v);
        handed_back.or(accepted)
    }

    /// What is kept of `key`, unless its time is over at `now`.
    pub fn get(&self, key: &OutcomeKey, now: u64) -> Option<&V> {
        self.handed_back
            .get(key, now)
            .or_else(|| self.accepted.get(key, now))
    }

    pub fn len(&self) -> usize {
        self.accepted.entries.len() + self.handed_back.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries of one kind, in the order they were put.
struct Part<V> {
    /// Key -> (stamp, answered until in Unix seconds, what is kept of it).
    entries: FxHashMap<OutcomeKey, (u64, u64, V)>,
    /// Keys in the order they were put, with their stamp and end: the oldest give way first. A key taken out early
    /// stays here until its turn comes, told apart from a newer put of the same key by its stamp.
    order: VecDeque<(OutcomeKey, u64, u64)>,
    stamp: u64,
    capacity: usize,
}

impl<V> Part<V> {
    fn new(capacity: usize) -> Part<V> {
        Part {
            entries: FxHashMap::default(),
            order: VecDeque::new(),
            stamp: 0,
            capacity: capacity.max(1),
        }
    }

    fn put(&mut self, key: OutcomeKey, value: V, now: u64, until: u64) {
        self.stamp += 1;
        self.entries.insert(key, (self.stamp, until, value));
        self.order.push_back((key, self.stamp, until));
        self.trim(now);
    }

    fn get(&self, key: &OutcomeKey, now: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, until, _)| now <= *until)
            .map(|(_, _, v)| v)
    }

    /// Forgets the oldest beyond the capacity, and the oldest whose time is over (one whose time ends sooner than
    /// an older one's goes when its turn comes, or when a lookup finds it over).
    fn trim(&mut self, now: u64) {
        while let Some(&(key, stamp, until)) = self.order.front() {
            if self.order.len() <= self.capacity && now <= until {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|(s, _, _)| *s == stamp) {
                self.entries.remove(&key);
            }
        }
        // A shard that was full and emptied gives its memory back.
        if self.entries.is_empty() && self.order.is_empty() && self.entries.capacity() > 64 {
            self.entries.shrink_to(0);
            self.order.shrink_to(0);
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
        let mut s = Part::new(3);
        for n in 0..5 {
            s.put(key(n), n, 100, 3600);
        }
        assert_eq!(s.entries.len(), 3);
        assert!(s.get(&key(0), 100).is_none());
        assert!(s.get(&key(1), 100).is_none());
        assert_eq!(s.get(&key(4), 100), Some(&4));
    }

    #[test]
    fn an_entry_whose_time_is_over_is_not_answered_and_goes_at_the_next_put() {
        let mut s = InStream::new(1);
        s.accepted(key(1), 1, 100, 160);
        assert_eq!(s.get(&key(1), 160), Some(&1));
        assert!(s.get(&key(1), 161).is_none());
        s.accepted(key(2), 2, 161, 221);
        assert_eq!(s.len(), 1);
    }

    /// A key put again after it was taken keeps its newer entry when the older one's turn to give way comes.
    #[test]
    fn a_key_put_again_is_not_forgotten_with_its_older_entry() {
        let mut s = Part::new(2);
        s.put(key(1), 1, 100, 3600);
        assert_eq!(s.entries.remove(&key(1)).map(|e| e.2), Some(1));
        s.put(key(1), 11, 100, 3600);
        s.put(key(2), 2, 100, 3600);
        // The first put of key 1 gives way; its second stays.
        assert_eq!(s.get(&key(1), 100), Some(&11));
        assert_eq!(s.get(&key(2), 100), Some(&2));
        s.put(key(3), 3, 100, 3600);
        assert!(s.get(&key(1), 100).is_none());
        assert_eq!(s.entries.len(), 2);
    }

    /// However many notifications a node accepts, the retries it gave back are not pushed out by them; and an
    /// acceptance recorded after this node already gave the notification back does not replace what that says.
    #[test]
    fn acceptances_never_push_out_the_retries_given_back() {
        let mut s = InStream::new(1);
        s.handed_back(key(0), "retry", 100, 10_000);
        s.accepted(key(0), "accepted late", 100, 700);
        assert_eq!(s.get(&key(0), 100), Some(&"retry"));
        for n in 0..=ACCEPTED_CAPACITY {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            s.accepted(k, "accepted", 100, 700);
        }
        assert_eq!(s.get(&key(0), 100), Some(&"retry"));
        assert_eq!(s.accepted.entries.len(), ACCEPTED_CAPACITY);
        assert_eq!(s.take(&key(0)), Some("retry"));
        assert!(s.get(&key(0), 100).is_none());
    }
}
