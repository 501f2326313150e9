//! The channels of a simulator: per bundle id (the simulator serves one environment), each with its storage
//! policy, under random base64 ids (128 random bits) that are not reused, at most `max_channels` per bundle id.
//!
//! An id is never that of a live channel nor that of one of the latest [`RETIRED_KEPT`] deleted ones; older
//! deleted ids are forgotten, so that a long run creating and deleting channels does not grow without bound (a
//! random id meeting one of them again is as unlikely as two UUIDs colliding).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine;
use herald_apns::broadcast::{BroadcastReason, StoragePolicy};

/// Every channel, behind one lock (channel operations are rare next to broadcasts, which only read).
#[derive(Debug)]
pub(crate) struct ChannelStore {
    max: usize,
    /// How many deleted ids are remembered ([`RETIRED_KEPT`]).
    retired_kept: usize,
    inner: Mutex<Inner>,
}

/// Deleted channel ids remembered so that a new channel does not take one of them.
pub(crate) const RETIRED_KEPT: usize = 100_000;

#[derive(Debug, Default)]
struct Inner {
    by_bundle: HashMap<String, BTreeMap<String, StoragePolicy>>,
    /// The ids of the channels that exist, over every bundle id.
    live: HashSet<String>,
    /// The latest deleted ids, oldest first (at most `retired_kept`), and the same as a set.
    retired: VecDeque<String>,
    retired_set: HashSet<String>,
}

impl ChannelStore {
    pub fn new(max: usize) -> ChannelStore {
        ChannelStore::with_retired_kept(max, RETIRED_KEPT)
    }

    fn with_retired_kept(max: usize, retired_kept: usize) -> ChannelStore {
        ChannelStore {
            max,
            retired_kept,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new channel, or CannotCreateChannelConfig at the limit.
    pub fn create(&self, bundle: &str, policy: StoragePolicy) -> Result<String, BroadcastReason> {
        let mut g = self.lock();
        let Inner {
            by_bundle,
            live,
            retired_set,
            ..
        } = &mut *g;
        let channels = by_bundle.entry(bundle.to_owned()).or_default();
        if channels.len() >= self.max {
            return Err(BroadcastReason::CannotCreateChannelConfig);
        }
        let id = loop {
            let id =
                base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
            if !retired_set.contains(&id) && live.insert(id.clone()) {
                break id;
            }
        };
        channels.insert(id.clone(), policy);
        Ok(id)
    }

    /// The channel's policy, or ChannelNotRegistered.
    pub fn get(&self, bundle: &str, id: &str) -> Result<StoragePolicy, BroadcastReason> {
        self.lock()
            .by_bundle
            .get(bundle)
            .and_then(|c| c.get(id).copied())
            .ok_or(BroadcastReason::ChannelNotRegistered)
    }

    pub fn delete(&self, bundle: &str, id: &str) -> Result<(), BroadcastReason> {
        let mut g = self.lock();
        g.by_bundle
            .get_mut(bundle)
            .and_then(|c| c.remove(id))
            .ok_or(BroadcastReason::ChannelNotRegistered)?;
        g.live.remove(id);
        if self.retired_kept > 0 {
            if g.retired.len() >= self.retired_kept
                && let Some(oldest) = g.retired.pop_front()
            {
                g.retired_set.remove(&oldest);
            }
            g.retired.push_back(id.to_owned());
            g.retired_set.insert(id.to_owned());
        }
        Ok(())
    }

    pub fn list(&self, bundle: &str) -> Vec<String> {
        self.lock()
            .by_bundle
            .get(bundle)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Channels over every bundle id.
    pub fn count(&self) -> usize {
        self.lock().by_bundle.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_per_bundle_limited_and_never_reused() {
        let s = ChannelStore::new(2);
        let a = s.create("com.a", StoragePolicy::NoStorage).unwrap();
        let b = s.create("com.a", StoragePolicy::MostRecentMessage).unwrap();
        assert_ne!(a, b);
        assert!(base64::engine::general_purpose::STANDARD.decode(&a).is_ok());
        assert_eq!(
            s.create("com.a", StoragePolicy::NoStorage),
            Err(BroadcastReason::CannotCreateChannelConfig)
        );
        s.create("com.b", StoragePolicy::NoStorage).unwrap();
        assert_eq!(s.get("com.a", &b), Ok(StoragePolicy::MostRecentMessage));
        assert_eq!(
            s.get("com.b", &a),
            Err(BroadcastReason::ChannelNotRegistered)
        );
        s.delete("com.a", &a).unwrap();
        assert_eq!(
            s.delete("com.a", &a),
            Err(BroadcastReason::ChannelNotRegistered)
        );
        assert_eq!(s.list("com.a"), vec![b]);
        assert_eq!(s.count(), 2);
    }

    /// Creating and deleting channels for a long time keeps the ids the store remembers bounded: the live ones and
    /// the latest deleted ones, the most recent deletion always among them.
    #[test]
    fn the_ids_remembered_stay_bounded() {
        let s = ChannelStore::with_retired_kept(2, 4);
        let mut last = String::new();
        for _ in 0..100 {
            last = s.create("com.a", StoragePolicy::NoStorage).unwrap();
            s.delete("com.a", &last).unwrap();
        }
        let kept = s.create("com.a", StoragePolicy::NoStorage).unwrap();
        let g = s.lock();
        assert_eq!(g.live.len(), 1);
        assert!(g.live.contains(&kept));
        assert_eq!((g.retired.len(), g.retired_set.len()), (4, 4));
        assert!(
            g.retired_set.contains(&last),
            "the latest deletion is remembered"
        );
        assert_eq!(g.retired.back(), Some(&last));
    }
}
