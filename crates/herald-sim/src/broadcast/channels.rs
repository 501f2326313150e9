//! The channels of a simulator: per bundle id (the simulator serves one environment), each with its storage
//! policy, under random base64 ids that are never reused, at most `max_channels` per bundle id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use base64::Engine;
use herald_apns::broadcast::{BroadcastReason, StoragePolicy};

/// Every channel, behind one lock (channel operations are rare next to broadcasts, which only read).
#[derive(Debug)]
pub(crate) struct ChannelStore {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_bundle: HashMap<String, BTreeMap<String, StoragePolicy>>,
    /// Every id ever handed out: ids are never reused, even after a delete.
    issued: HashSet<String>,
}

impl ChannelStore {
    pub fn new(max: usize) -> ChannelStore {
        ChannelStore {
            max,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new channel, or CannotCreateChannelConfig at the limit.
    pub fn create(&self, bundle: &str, policy: StoragePolicy) -> Result<String, BroadcastReason> {
        let mut g = self.lock();
        let Inner { by_bundle, issued } = &mut *g;
        let channels = by_bundle.entry(bundle.to_owned()).or_default();
        if channels.len() >= self.max {
            return Err(BroadcastReason::CannotCreateChannelConfig);
        }
        let id = loop {
            let id =
                base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
            if issued.insert(id.clone()) {
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
        self.lock()
            .by_bundle
            .get_mut(bundle)
            .and_then(|c| c.remove(id))
            .map(|_| ())
            .ok_or(BroadcastReason::ChannelNotRegistered)
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
}
