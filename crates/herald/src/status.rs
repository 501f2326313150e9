//! What a running herald reports about itself to its operators: the totals of the console's `summary` and the
//! outcome of a configuration reload. A leaf module: the server produces these, the console prints them.

use std::path::PathBuf;
use std::time::Duration;

/// Why a reload was refused; the configuration in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "{path}: the new configuration has errors; the running one stays in force:\n{diagnostics}"
    )]
    Invalid { path: PathBuf, diagnostics: String },
    /// The reload's task ended before it finished (herald is stopping): what it had put in force stays.
    #[error("{path}: the reload did not finish: {why} (herald is stopping)")]
    Interrupted { path: PathBuf, why: String },
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub path: PathBuf,
    /// Domains whose new settings are in force (their old connections drain).
    pub domains: usize,
    /// Domains (with traffic or not) that the new configuration cannot deliver: (domain, why).
    pub unroutable: Vec<(String, String)>,
    pub listeners_started: Vec<String>,
    pub listeners_stopped: Vec<String>,
    pub listeners_restarted: Vec<String>,
    /// HTTP listeners whose certificate files were renewed in place: the new certificate is in force, without a
    /// restart.
    pub certificates_reloaded: Vec<String>,
    /// Listeners that could not take their new settings: each says what it runs with now (its previous settings,
    /// or nothing: down). The console answers a reload with any of these as an error.
    pub listener_errors: Vec<String>,
    /// Warnings of the new configuration.
    pub warnings: Vec<String>,
}

/// Totals for `summary`, since start or the last `summary reset`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub failed: u64,
    pub transient_failures: u64,
    pub rejected: u64,
    pub active_queue: u64,
    pub delayed_queue: u64,
    pub active_domains: u64,
    pub outbound_connections: u64,
    pub delivery_rate: f64,
    pub reception_rate: f64,
    /// Unix time of the last reset (or start).
    pub since: u64,
    pub uptime: Duration,
}
