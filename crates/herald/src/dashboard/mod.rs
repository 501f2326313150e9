//! The operators' web dashboard (`http_services = ( … dashboard )`): a small single-page application embedded
//! in the binary (`assets/`), its JSON data calls and its server-sent event stream under `/dashboard/`.
//!
//! [`Hub`] is shared by every listener of one server: the recent-outcomes ring ([`outcomes`]), a per-second
//! history of the last 15 minutes, per-domain counters for the last minute and hour, and a broadcast of one
//! JSON "tick" per second that every open event stream forwards (built once, whatever the number of clients, and
//! only while a client listens). [`auth`] decides who may read and act; [`api`] answers the calls.

pub mod api;
pub mod auth;
pub mod outcomes;
pub mod sampler;

use std::sync::{Arc, Mutex};

pub use api::routes;
pub use sampler::{Hub, spawn_sampler};

/// Recent failures of one domain, for the Domains page's "last error".
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct LastError {
    pub at: u64,
    pub reason: String,
    pub status: Option<u16>,
}

/// Keeps the newest failure of each domain (recorded with the outcome ring).
#[derive(Debug, Default)]
pub struct LastErrors(Mutex<std::collections::HashMap<Arc<str>, LastError>>);

impl LastErrors {
    pub fn set(&self, domain: &Arc<str>, e: LastError) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.clone(), e);
    }

    /// Keeps the last errors of the domains `keep` says yes to, and forgets the others.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d, _| keep(d));
    }

    /// How many domains have a last error kept.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, domain: &str) -> Option<LastError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }
}
