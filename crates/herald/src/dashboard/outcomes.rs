//! The dashboard's ring of recent outcomes: the last [`CAPACITY`] delivered / transient / permanent results, each
//! with a sequence number so that the event stream sends only what is new. It is the one seam between delivery and
//! the dashboard: `Logs::outcome` calls [`RecentOutcomes::record`]; nothing else in delivery knows it exists.
//! Tokens are kept as a short prefix only (never the full device token).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::logs::{OutcomeKind, OutcomeRecord};

/// How many outcomes the ring keeps.
pub const CAPACITY: usize = 500;

/// Hex digits of a device token kept for display and filtering.
pub const TOKEN_PREFIX: usize = 8;

/// One outcome as the dashboard shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// `delivered`, `transient` or `permanent`.
    pub kind: &'static str,
    pub domain: String,
    pub binding: String,
    /// The first [`TOKEN_PREFIX`] hex digits of the device token.
    pub token: String,
    pub status: Option<u16>,
    /// APNs' reason (or herald's own) for failures; empty for deliveries.
    pub reason: String,
    pub retries: u32,
}

/// What the Outcomes page filters by; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub domain: Option<String>,
    pub kind: Option<String>,
    pub token_prefix: Option<String>,
    pub reason: Option<String>,
}

impl Filter {
    pub fn matches(&self, o: &Outcome) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || w.eq_ignore_ascii_case(have))
        };
        eq(&self.domain, &o.domain)
            && eq(&self.kind, o.kind)
            && eq(&self.reason, &o.reason)
            && self
                .token_prefix
                .as_deref()
                .is_none_or(|p| token_matches(&o.token, p))
    }
}

/// The first [`TOKEN_PREFIX`] bytes of `token`, cut at a character boundary at or before them: a device token
/// is hex, but one read from elsewhere (another node's store, a store file edited by hand) need not be.
pub fn token_prefix(token: &str) -> &str {
    let mut end = token.len().min(TOKEN_PREFIX);
    while !token.is_char_boundary(end) {
        end -= 1;
    }
    &token[..end]
}

/// Whether the stored token prefix `token` starts with the filter `prefix` (either case). Only the stored prefix
/// can match: a longer filter compares on what is kept. Compared as bytes, as the filter is whatever the query
/// gave: cutting it as text at the stored length could fall inside a multi-byte character (`0000000é`), which
/// panicked the request; a filter with a non-hex character there matches no token, which is all hex.
fn token_matches(token: &str, prefix: &str) -> bool {
    let (token, prefix) = (token.as_bytes(), prefix.as_bytes());
    let n = prefix.len().min(token.len());
    token[..n].eq_ignore_ascii_case(&prefix[..n])
}

#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    items: VecDeque<Outcome>,
}

/// The ring; cheap to record into (one short lock, no allocation beyond the entry).
#[derive(Debug, Default)]
pub struct RecentOutcomes {
    ring: Mutex<Ring>,
    /// The newest failure of each domain.
    pub last_errors: super::LastErrors,
}

/// The kinds an outcome has, as the list shows them and its `kind` filter takes them.
pub const KINDS: [&str; 3] = ["delivered", "transient", "permanent"];

impl RecentOutcomes {
    pub fn record(&self, r: &OutcomeRecord<'_>) {
        let kind = match r.kind {
            OutcomeKind::Delivered => KINDS[0],
            OutcomeKind::Transient => KINDS[1],
            OutcomeKind::Permanent => KINDS[2],
        };
        if r.kind != OutcomeKind::Delivered {
            self.last_errors.set(
                &r.notification.domain,
                super::LastError {
                    at: r.at,
                    reason: r.error.to_owned(),
                    status: r.status,
                },
            );
        }
        let mut token = r.notification.push.token.to_hex();
        // Hex: one byte per character.
        token.truncate(TOKEN_PREFIX);
        self.push(Outcome {
            seq: 0,
            at: r.at,
            kind,
            domain: r.notification.domain.to_string(),
            binding: r.binding.to_owned(),
            token,
            status: r.status,
            reason: r.error.to_owned(),
            retries: r.retries,
        });
    }

    /// Adds one outcome (its `seq` is assigned here).
    pub fn push(&self, mut o: Outcome) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.next_seq += 1;
        o.seq = ring.next_seq;
        if ring.items.len() == CAPACITY {
            ring.items.pop_front();
        }
        ring.items.push_back(o);
    }

    /// The sequence number of the newest outcome (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).next_seq
    }

    /// Outcomes newer than `after` that match `filter`, newest last, at most `limit` (the newest ones).
    pub fn since(&self, after: u64, filter: &Filter, limit: usize) -> Vec<Outcome> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Outcome> = ring
            .items
            .iter()
            .rev()
            .take_while(|o| o.seq > after)
            .filter(|o| filter.matches(o))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(domain: &str, kind: &'static str, token: &str, reason: &str) -> Outcome {
        Outcome {
            seq: 0,
            at: 1,
            kind,
            domain: domain.into(),
            binding: "default".into(),
            token: token.into(),
            status: None,
            reason: reason.into(),
            retries: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_numbers_them() {
        let r = RecentOutcomes::default();
        for i in 0..CAPACITY + 10 {
            r.push(outcome(&format!("d{i}"), "delivered", "abcd", ""));
        }
        assert_eq!(r.last_seq(), (CAPACITY + 10) as u64);
        let all = r.since(0, &Filter::default(), usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 11);
        let newer = r.since(r.last_seq() - 2, &Filter::default(), usize::MAX);
        assert_eq!(newer.len(), 2);
        assert_eq!(r.since(0, &Filter::default(), 3).len(), 3);
    }

    #[test]
    fn filters_match_domain_kind_reason_and_token_prefix() {
        let r = RecentOutcomes::default();
        r.push(outcome("a.example", "delivered", "0011aabb", ""));
        r.push(outcome(
            "b.example",
            "permanent",
            "ffee0011",
            "BadDeviceToken",
        ));
        let f = |f: Filter| r.since(0, &f, 10).len();
        assert_eq!(f(Filter::default()), 2);
        let by_domain = Filter {
            domain: Some("B.example".into()),
            ..Filter::default()
        };
        assert_eq!(f(by_domain), 1);
        let by_reason = Filter {
            reason: Some("baddevicetoken".into()),
            kind: Some("permanent".into()),
            ..Filter::default()
        };
        assert_eq!(f(by_reason), 1);
        let by_token = Filter {
            token_prefix: Some("0011".into()),
            ..Filter::default()
        };
        assert_eq!(f(by_token), 1);
    }

    #[test]
    fn a_token_prefix_is_cut_at_a_character_boundary() {
        assert_eq!(token_prefix("00112233445566"), "00112233");
        assert_eq!(token_prefix("0011"), "0011");
        assert_eq!(token_prefix(""), "");
        // `é` is two bytes from byte 7: cut before it.
        assert_eq!(token_prefix("0000000é11"), "0000000");
        assert_eq!(token_prefix("éééééé"), "éééé");
        assert_eq!(token_prefix("0€€€"), "0€€");
        assert_eq!(token_prefix("😀😀😀"), "😀😀");
    }

    #[test]
    fn a_token_filter_is_compared_as_bytes_whatever_it_holds() {
        let o = outcome("a.example", "delivered", "0000000a", "");
        let by_token = |p: &str| {
            Filter {
                token_prefix: Some(p.into()),
                ..Filter::default()
            }
            .matches(&o)
        };
        // `é` is two bytes from byte 7: cutting the filter at 8 bytes as text panicked.
        assert!(!by_token("0000000é"));
        assert!(!by_token("é"));
        assert!(!by_token("000000é0"));
        assert!(by_token("0000000A"));
        assert!(
            by_token("0000000aé"),
            "beyond the stored prefix nothing is compared"
        );
        assert!(by_token(""));
    }
}
