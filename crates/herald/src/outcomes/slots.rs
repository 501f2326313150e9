//! A map from store keys to what the status book keeps per notification, laid out for how ids arrive.
//!
//! This process numbers its notifications in order, and they are queued, sent and answered roughly in that order.
//! A hash map scatters neighbours over the whole table, so each of the three updates a notification gets on the
//! delivery path missed the processor's caches. [`Slots`] keeps the keys of one run (node and process start) in a
//! window indexed by counter, so that neighbours are neighbours in memory; keys of other runs, and the oldest
//! entries once the window is more than [`WINDOW`] slots and less than half full (a notification retried while
//! many newer ones passed), live in a hash map beside it. A window as large as the notifications queued costs
//! no more memory than a map of them would. Counters are dealt to the shards in blocks of consecutive ones
//! ([`Deal`]), so that a run of neighbouring ids lies side by side in one shard's window, where the processor's
//! prefetcher follows the delivery path along them.

use std::collections::VecDeque;

use herald_spool::OutcomeKey;
use rustc_hash::FxHashMap;

/// Slots the window may span however empty it is; beyond, it is kept at least half full.
pub const WINDOW: u64 = 4096;

/// A map of the [`OutcomeKey`]s of one shard: counters are dealt to `shards` shards in blocks of `block` consecutive
/// ones, so that neighbouring ids share a shard and lie next to each other in its window (see the module
/// documentation).
pub struct Slots<V> {
    deal: Deal,
    /// The node and run of the keys in the window, and the shard their counters are dealt to.
    run: Option<([u8; 8], u64)>,
    /// `window[i]` holds the key whose counter's index ([`Deal::index`]) is `base + i`.
    window: VecDeque<Option<V>>,
    base: u64,
    in_window: usize,
    other: FxHashMap<OutcomeKey, V>,
}

/// How counters are dealt to shards: `block` consecutive counters to each of `shards` shards in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deal {
    pub shards: u64,
    pub block: u64,
}

impl Deal {
    /// The shard `counter` is dealt to.
    pub fn shard(self, counter: u64) -> u64 {
        (counter / self.block) % self.shards
    }

    /// The position of `counter` among its shard's counters.
    fn index(self, counter: u64) -> u64 {
        (counter / (self.block * self.shards)) * self.block + counter % self.block
    }

    /// The counter at position `index` of shard `shard`.
    fn counter(self, shard: u64, index: u64) -> u64 {
        (index / self.block) * (self.block * self.shards) + shard * self.block + index % self.block
    }
}

/// The shard of a key under `deal`.
pub fn shard_of(key: &OutcomeKey, deal: Deal) -> u64 {
    deal.shard(split(key).1)
}

fn split(key: &OutcomeKey) -> ([u8; 8], u64) {
    let mut run = [0u8; 8];
    run.copy_from_slice(&key[..8]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&key[8..]);
    (run, u64::from_be_bytes(counter))
}

impl<V> Slots<V> {
    pub fn new(deal: Deal) -> Slots<V> {
        Slots {
            deal: Deal {
                shards: deal.shards.max(1),
                block: deal.block.max(1),
            },
            run: None,
            window: VecDeque::new(),
            base: 0,
            in_window: 0,
            other: FxHashMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.in_window + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The window index of `key` if it belongs to the window's run (whether or not inside it now).
    fn index(&self, key: &OutcomeKey) -> Option<u64> {
        let (run, counter) = split(key);
        match self.run {
            Some((r, shard)) if r == run && self.deal.shard(counter) == shard => {
                Some(self.deal.index(counter))
            }
            _ => None,
        }
    }

    /// The position in `window` of `key`, when it is there.
    fn position(&self, key: &OutcomeKey) -> Option<usize> {
        let i = self.index(key)?.checked_sub(self.base)?;
        (i < self.window.len() as u64).then_some(i as usize)
    }

    // A key can be in the map while its index is inside the window (kept there below an earlier start of the
    // window): an empty slot always looks in the map too.

    pub fn get(&self, key: &OutcomeKey) -> Option<&V> {
        match self.position(key) {
            Some(i) if self.window[i].is_some() => self.window[i].as_ref(),
            _ => self.other.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &OutcomeKey) -> Option<&mut V> {
        match self.position(key) {
            Some(i) if self.window[i].is_some() => self.window[i].as_mut(),
            _ => self.other.get_mut(key),
        }
    }

    /// The value of `key`, inserted with `make` when there is none.
    pub fn get_or_insert_with(&mut self, key: OutcomeKey, make: impl FnOnce() -> V) -> &mut V {
        if self.window.is_empty() {
            // The window follows the run of the first key it takes: after a restart, the restored notifications of
            // the previous run, then (once they are gone from it) this run's.
            let (run, counter) = split(&key);
            self.run = Some((run, self.deal.shard(counter)));
        }
        if self.other.contains_key(&key) {
            return self.other.entry(key).or_insert_with(make);
        }
        let Some(idx) = self
            .index(&key)
            .filter(|&i| i >= self.base || self.window.is_empty())
        else {
            return self.other.entry(key).or_insert_with(make);
        };
        if self.window.is_empty() {
            self.base = idx;
        }
        let end = self.base + self.window.len() as u64;
        if idx.saturating_sub(end) > WINDOW.max(2 * self.in_window as u64) {
            // A jump far ahead: rather than empty slots up to it, the window moves there.
            while !self.window.is_empty() {
                self.spill_front();
            }
            self.base = idx;
        }
        let i = (idx - self.base) as usize;
        if i >= self.window.len() {
            self.window.resize_with(i + 1, || None);
        }
        if self.window[i].is_none() {
            self.window[i] = Some(make());
            self.in_window += 1;
            // Mostly empty beyond its minimum (a straggler holding the front while the ids after it finished): the
            // front moves to the map until the window is at least half full.
            while self.window.len() as u64 > WINDOW && self.window.len() > 2 * self.in_window {
                self.spill_front();
            }
        }
        // The spill can pass the slot just filled (a straggler far behind the front finds a window of mostly empty
        // slots): its value then went to the map with the front.
        let Some(i) = idx.checked_sub(self.base) else {
            return match self.other.get_mut(&key) {
                Some(v) => v,
                None => unreachable!("a slot passed by the front has its value in the map"),
            };
        };
        match &mut self.window[i as usize] {
            Some(v) => v,
            None => unreachable!("the slot was filled above and only a spill moves the front"),
        }
    }

    /// Moves the window's first slot (its value to the map, if any) out of the window.
    fn spill_front(&mut self) {
        if let Some(Some(v)) = self.window.pop_front() {
            self.in_window -= 1;
            let k = self.key_at(self.base);
            self.other.insert(k, v);
        }
        self.base += 1;
    }

    pub fn remove(&mut self, key: &OutcomeKey) -> Option<V> {
        let Some(i) = self.position(key).filter(|&i| self.window[i].is_some()) else {
            return self.other.remove(key);
        };
        let v = self.window[i].take();
        self.in_window -= 1;
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
        // The memory of a burst goes back once it is through (halving at most, so shrinking stays rare).
        let floor = self.window.len().max(WINDOW as usize);
        if self.window.capacity() > 4 * floor {
            self.window.shrink_to(2 * floor);
        }
        v
    }

    /// The key of window index `idx`.
    fn key_at(&self, idx: u64) -> OutcomeKey {
        let (run, shard) = self.run.unwrap_or(([0; 8], 0));
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&run);
        k[8..].copy_from_slice(&self.deal.counter(shard, idx).to_be_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Deal = Deal {
        shards: 1,
        block: 1,
    };

    fn key(run: u8, counter: u64) -> OutcomeKey {
        let mut k = [0u8; 16];
        k[0] = run;
        k[8..].copy_from_slice(&counter.to_be_bytes());
        k
    }

    #[test]
    fn a_deal_maps_each_counter_to_one_shard_position_and_back() {
        let deal = Deal {
            shards: 4,
            block: 8,
        };
        let mut seen = std::collections::HashSet::new();
        for counter in 0..1_000u64 {
            let (shard, index) = (deal.shard(counter), deal.index(counter));
            assert!(shard < 4);
            assert_eq!(deal.counter(shard, index), counter);
            assert!(seen.insert((shard, index)), "{counter}");
        }
        // Eight neighbours share a shard and sit next to each other in it.
        assert_eq!((8..16).map(|c| deal.shard(c)).collect::<Vec<_>>(), [1; 8]);
        assert_eq!(
            (8..16).map(|c| deal.index(c)).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!((deal.shard(40), deal.index(40)), (1, 8));
    }

    #[test]
    fn keys_dealt_in_blocks_are_found_and_spilled_with_their_own_keys() {
        let deal = Deal {
            shards: 4,
            block: 8,
        };
        let mut s = Slots::new(deal);
        // Shard 1's counters: 8..16, 40..48, ...
        let counters: Vec<u64> = (0..20_000u64).filter(|&c| deal.shard(c) == 1).collect();
        for &c in &counters {
            *s.get_or_insert_with(key(1, c), || c) += 0;
        }
        for &c in &counters {
            assert_eq!(s.get(&key(1, c)), Some(&c));
        }
        // Removing all but a straggler at the front, then adding far ahead, spills the straggler to the map
        // under its own key.
        for &c in &counters[1..] {
            assert_eq!(s.remove(&key(1, c)), Some(c));
        }
        let far = deal.counter(1, deal.index(counters[counters.len() - 1]) + 10 * WINDOW);
        s.get_or_insert_with(key(1, far), || far);
        assert_eq!(s.get(&key(1, counters[0])), Some(&counters[0]));
        assert_eq!(s.get(&key(1, far)), Some(&far));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn keys_in_order_are_found_inserted_and_removed() {
        let mut s = Slots::new(Deal {
            shards: 4,
            block: 1,
        });
        for c in (3..400).step_by(4) {
            *s.get_or_insert_with(key(1, c), || 0) += c;
        }
        assert_eq!(s.len(), 100);
        assert!(
            s.other.is_empty(),
            "every key of the run sits in the window"
        );
        assert_eq!(s.get(&key(1, 7)), Some(&7));
        assert_eq!(
            s.get(&key(1, 8)),
            None,
            "another remainder is not this shard's"
        );
        assert_eq!(s.get(&key(2, 7)), None);
        *s.get_mut(&key(1, 11)).unwrap() += 1;
        assert_eq!(s.remove(&key(1, 11)), Some(12));
        assert_eq!(s.remove(&key(1, 11)), None);
        // The front leaves as soon as it is done, holes included.
        assert_eq!(s.remove(&key(1, 3)), Some(3));
        assert_eq!(s.remove(&key(1, 7)), Some(7));
        assert_eq!((s.base, s.window.len()), (3, 97));
        // Inserting an existing key keeps its value.
        assert_eq!(*s.get_or_insert_with(key(1, 15), || 0), 15);
        assert_eq!(s.len(), 97);
    }

    #[test]
    fn other_runs_and_stragglers_live_beside_the_window() {
        let mut s = Slots::new(ONE);
        s.get_or_insert_with(key(1, 10), || "a");
        s.get_or_insert_with(key(2, 10), || "other run");
        s.get_or_insert_with(key(1, 11), || "b");
        s.remove(&key(1, 10));
        // Below the window's start: kept in the map.
        s.get_or_insert_with(key(1, 5), || "old");
        assert_eq!(s.get(&key(1, 5)), Some(&"old"));
        assert_eq!(s.get(&key(2, 10)), Some(&"other run"));
        assert_eq!(s.len(), 3);
        assert_eq!(s.remove(&key(1, 5)), Some("old"));
        assert_eq!(s.remove(&key(2, 10)), Some("other run"));
        assert_eq!(s.len(), 1);
        // A key kept in the map stays found when the window later starts below it.
        s.get_or_insert_with(key(1, 7), || "straggler");
        s.remove(&key(1, 11));
        s.get_or_insert_with(key(1, 6), || "new start");
        assert_eq!(s.get(&key(1, 7)), Some(&"straggler"));
        assert_eq!(*s.get_or_insert_with(key(1, 7), || "twice"), "straggler");
        assert_eq!(s.get_mut(&key(1, 7)).map(|v| *v), Some("straggler"));
        assert_eq!(s.remove(&key(1, 7)), Some("straggler"));
        assert_eq!(s.remove(&key(1, 6)), Some("new start"));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_full_window_grows_as_far_as_the_ids_queued() {
        let mut s = Slots::new(ONE);
        for c in 0..WINDOW * 5 {
            s.get_or_insert_with(key(1, c), || c);
        }
        assert_eq!((s.window.len() as u64, s.other.len()), (WINDOW * 5, 0));
        // Half finished, in order: still no map.
        for c in 0..WINDOW * 2 {
            assert_eq!(s.remove(&key(1, c)), Some(c));
        }
        s.get_or_insert_with(key(1, WINDOW * 5), || 0);
        assert_eq!((s.window.len() as u64, s.other.len()), (WINDOW * 3 + 1, 0));
        // Once the burst is through, its memory goes back.
        for c in WINDOW * 2..=WINDOW * 5 {
            s.remove(&key(1, c));
        }
        assert!(s.is_empty());
        assert!(
            s.window.capacity() <= 4 * WINDOW as usize,
            "{}",
            s.window.capacity()
        );
    }

    #[test]
    fn an_empty_window_takes_the_run_of_the_next_key() {
        let mut s = Slots::new(ONE);
        s.get_or_insert_with(key(1, 10), || "previous run");
        s.get_or_insert_with(key(2, 3), || "this run, early");
        assert_eq!(s.remove(&key(1, 10)), Some("previous run"));
        s.get_or_insert_with(key(2, 4), || "this run");
        assert_eq!(s.run, Some((key(2, 0)[..8].try_into().unwrap(), 0)));
        assert_eq!((s.in_window, s.other.len()), (1, 1));
        assert_eq!(s.get(&key(2, 3)), Some(&"this run, early"));
        assert_eq!(s.get(&key(2, 4)), Some(&"this run"));
    }

    /// A key filled into a window so empty that the spill that follows passes it: its value is in the map, found
    /// there, and the window keeps its bound.
    #[test]
    fn a_slot_passed_by_the_spill_it_caused_is_found_in_the_map() {
        let mut s = Slots::new(ONE);
        s.get_or_insert_with(key(1, 0), || 0u64);
        for c in (1..=10_000).filter(|&c| c != 5) {
            s.get_or_insert_with(key(1, c), || c);
        }
        for c in 1..=10_000 {
            s.remove(&key(1, c));
        }
        assert_eq!(*s.get_or_insert_with(key(1, 5), || 5), 5);
        assert!(s.window.len() as u64 <= WINDOW);
        assert_eq!(s.get(&key(1, 5)), Some(&5));
        assert_eq!(s.get(&key(1, 0)), Some(&0));
        *s.get_or_insert_with(key(1, 5), || 99) += 1;
        assert_eq!(s.remove(&key(1, 5)), Some(6));
        assert_eq!(s.remove(&key(1, 0)), Some(0));
        assert!(s.is_empty());
    }

    /// Inserts, lookups and removals in a random order (fixed seed) answer as a map does: ids mostly queued and
    /// finished in order, with stragglers left behind, ids queued late far behind the front, jumps ahead, other
    /// runs, over a deal of several shards.
    #[test]
    fn slots_answer_as_a_map_does() {
        use std::collections::BTreeMap;
        let deal = Deal {
            shards: 2,
            block: 4,
        };
        // xorshift64*: a fixed sequence without a crate.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        for round in 0..2 {
            let mut s = Slots::new(deal);
            // By key: this run's keys sort by counter.
            let mut model: BTreeMap<OutcomeKey, u64> = BTreeMap::new();
            // Keys that stay long (retried many times), finished rarely.
            let mut stragglers: std::collections::BTreeSet<OutcomeKey> = Default::default();
            // Shard 0's positions (as the book deals counters to it).
            let mut front = 0u64;
            for step in 0..80_000u64 {
                let r = next();
                let at = |index: u64| key(1, deal.counter(0, index));
                let mut insert = |s: &mut Slots<u64>, k: OutcomeKey| {
                    let v = *s.get_or_insert_with(k, || step);
                    assert_eq!(
                        v,
                        *model.entry(k).or_insert(step),
                        "round {round} step {step}"
                    );
                    if (r >> 20) % 64 == 0 {
                        stragglers.insert(k);
                    }
                };
                // Bursts: ids queued faster than they finish, then finishing faster than they come.
                let burst = (step / 20_000) % 2 == 0;
                let op = match (r % 20, burst) {
                    (0..=11, true) | (0, false) => 0,
                    (12, true) | (1..=3, false) => 7,
                    (13..=14, true) | (4..=14, false) => 8,
                    (n, _) => n,
                };
                match op {
                    // The next id, now and then far ahead, or of another run.
                    0 => {
                        front += 1 + if (r >> 5) % 50_000 == 0 {
                            3 * WINDOW
                        } else {
                            0
                        };
                        let k = if (r >> 12) % 64 == 0 {
                            key(2, front)
                        } else {
                            at(front)
                        };
                        insert(&mut s, k);
                    }
                    // An id queued late, behind the front: below the window, or in its empty slots.
                    7 if front > 0 => {
                        let k = at(front - (r >> 8) % (2 * WINDOW).min(front));
                        insert(&mut s, k);
                    }
                    // The oldest ids that are not stragglers finish: one, or (after a burst) many at once.
                    8 => {
                        let many = if burst || (r >> 8) % 64 != 0 {
                            1
                        } else {
                            4 * WINDOW
                        };
                        for _ in 0..many {
                            let Some(k) = model.keys().find(|k| !stragglers.contains(*k)).copied()
                            else {
                                break;
                            };
                            assert_eq!(s.remove(&k), model.remove(&k), "round {round} step {step}");
                        }
                    }
                    // Now and then the oldest straggler finishes.
                    15 if (r >> 8) % 16 == 0 => {
                        if let Some(k) = stragglers.pop_first() {
                            assert_eq!(s.remove(&k), model.remove(&k), "round {round} step {step}");
                        }
                    }
                    16 | 17 => {
                        let k = at(front.saturating_sub((r >> 8) % (3 * WINDOW)));
                        if let Some(v) = s.get_mut(&k) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&k) {
                            *v += 1;
                        }
                    }
                    _ => {
                        let k = at(front.saturating_sub((r >> 8) % (3 * WINDOW)));
                        assert_eq!(s.get(&k), model.get(&k), "round {round} step {step}");
                    }
                }
                assert_eq!(s.len(), model.len(), "round {round} step {step}");
            }
            for (k, v) in &model {
                assert_eq!(s.get(k), Some(v), "round {round}");
            }
        }
    }

    #[test]
    fn a_straggler_moves_to_the_map_when_the_window_would_be_mostly_empty() {
        let mut s = Slots::new(ONE);
        s.get_or_insert_with(key(1, 0), || 0u64);
        for c in 1..WINDOW * 3 {
            s.get_or_insert_with(key(1, c), || c);
            s.remove(&key(1, c));
        }
        assert!(s.window.len() as u64 <= WINDOW);
        assert_eq!(s.get(&key(1, 0)), Some(&0), "the straggler is still found");
        assert_eq!(s.other.len(), 1);
        // A jump far ahead empties the window into the map.
        s.get_or_insert_with(key(1, 10 * WINDOW), || 1);
        s.get_or_insert_with(key(1, 100 * WINDOW), || 2);
        assert_eq!(s.get(&key(1, 10 * WINDOW)), Some(&1));
        assert_eq!(s.get(&key(1, 100 * WINDOW)), Some(&2));
        assert_eq!((s.len(), s.window.len()), (3, 1));
        assert_eq!(s.remove(&key(1, 10 * WINDOW)), Some(1));
        assert_eq!(s.remove(&key(1, 0)), Some(0));
        assert_eq!(s.remove(&key(1, 100 * WINDOW)), Some(2));
        assert_eq!((s.len(), s.window.len()), (0, 0));
    }
}
