//! Device-token states (from the scenario, changeable at run time through the admin port) and the feedback
//! service's per-topic lists. Lookups on the request path are lock-free (an `ArcSwap` snapshot); only changes and
//! feedback reads take a lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::scenario::{TokenRule, TokenState};

/// What the simulator knows about one device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub state: TokenState,
    pub topic: Option<String>,
    /// When the token became invalid, ms since the epoch.
    pub timestamp_ms: u64,
}

/// A feedback tuple waiting to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackItem {
    /// Lowercase hex.
    pub token: String,
    /// Seconds since the epoch.
    pub timestamp: u32,
    /// `None` = listed for every topic.
    pub topic: Option<String>,
}

#[derive(Debug, Default)]
struct Feedback {
    items: Vec<FeedbackItem>,
    /// (topic, token) pairs already read for items listed for every topic.
    read: HashSet<(String, String)>,
}

/// Token states and feedback lists.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    map: ArcSwap<HashMap<String, TokenEntry>>,
    any: AtomicBool,
    write: Mutex<()>,
    feedback: Mutex<Feedback>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TokenRegistry {
    pub fn new(rules: &[TokenRule]) -> TokenRegistry {
        let reg = TokenRegistry::default();
        for rule in rules {
            reg.set(
                &rule.token,
                rule.state,
                rule.topic.clone(),
                rule.timestamp_ms,
            );
        }
        reg
    }

    /// Sets a token's state; an unregistered token is also queued for the feedback service.
    pub fn set(
        &self,
        token_hex: &str,
        state: TokenState,
        topic: Option<String>,
        timestamp_ms: Option<u64>,
    ) {
        let token = token_hex.to_ascii_lowercase();
        let timestamp_ms = timestamp_ms.unwrap_or_else(now_ms);
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&self.map.load());
        map.insert(
            token.clone(),
            TokenEntry {
                state,
                topic: topic.clone(),
                timestamp_ms,
            },
        );
        self.any.store(true, Ordering::Release);
        self.map.store(Arc::new(map));
        if state == TokenState::Unregistered {
            let mut fb = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
            fb.items.retain(|i| i.token != token);
            fb.read.retain(|(_, t)| *t != token);
            fb.items.push(FeedbackItem {
                token,
                timestamp: (timestamp_ms / 1000) as u32,
                topic,
            });
        }
    }

    /// The entry for a token (hex, either case), if the scenario or the admin port named it.
    pub fn get(&self, token_hex: &str) -> Option<TokenEntry> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let map = self.map.load();
        if token_hex.bytes().any(|b| b.is_ascii_uppercase()) {
            map.get(&token_hex.to_ascii_lowercase()).cloned()
        } else {
            map.get(token_hex).cloned()
        }
    }

    /// Takes the feedback tuples for `topic`: items for that topic are removed, items for every topic are
    /// marked read for it. Each item is returned once per topic.
    pub fn take_feedback(&self, topic: &str) -> Vec<FeedbackItem> {
        let mut fb = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
        let Feedback { items, read } = &mut *fb;
        let mut out = Vec::new();
        items.retain(|item| match &item.topic {
            Some(t) if t == topic => {
                out.push(item.clone());
                false
            }
            Some(_) => true,
            None => {
                if read.insert((topic.to_owned(), item.token.clone())) {
                    out.push(item.clone());
                }
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_feedback_empties_once_read() {
        let reg = TokenRegistry::new(&[TokenRule {
            token: "ABCD".into(),
            state: TokenState::Unregistered,
            topic: Some("t.one".into()),
            timestamp_ms: Some(5_000),
        }]);
        reg.set("eeff", TokenState::Unregistered, None, Some(7_000));
        assert_eq!(reg.get("abcd").unwrap().state, TokenState::Unregistered);
        assert_eq!(reg.get("ABCD").unwrap().timestamp_ms, 5_000);
        assert!(reg.get("0000").is_none());

        let one = reg.take_feedback("t.one");
        assert_eq!(one.len(), 2);
        assert!(reg.take_feedback("t.one").is_empty());
        let two = reg.take_feedback("t.two");
        assert_eq!(
            two,
            vec![FeedbackItem {
                token: "eeff".into(),
                timestamp: 7,
                topic: None
            }]
        );
    }
}
