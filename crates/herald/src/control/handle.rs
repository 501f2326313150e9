//! The narrow view of the running server that console commands work on. The server implements [`ServerHandle`]
//! and hands the control listener a weak reference to it, so the dependency points one way: the server starts
//! the control listener, and the control code knows only this trait (and the queue, spool and token store it
//! exposes), never the server itself.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use herald_conf::Config;
use herald_spool::Spool;

use crate::queue::Engine;
use crate::status::{ReloadError, ReloadReport, Summary};
use crate::tokens::InvalidTokenStore;

/// What a console command may read or do.
pub trait ServerHandle: Send + Sync {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;
    /// The file a reload without a path reads: the one herald started with, or the one the last successful reload
    /// from another path read.
    fn config_path(&self) -> std::path::PathBuf;
    /// How many reloads put a new configuration in force since start (0 while the one herald started with is in
    /// force).
    fn generation(&self) -> u64;
    /// The delivery engine: queues, statistics, flush, fail, message actions.
    fn engine(&self) -> &Engine;
    /// The spool, for its statistics and state.
    fn spool(&self) -> &dyn Spool;
    /// Every device token reported invalid.
    fn invalid_tokens(&self) -> &InvalidTokenStore;
    /// Totals since start or the last reset.
    fn summary(&self) -> Summary;
    fn reset_summary(&self);
    /// The status book (`status ID`), when the server keeps one.
    fn status_book(&self) -> Option<&crate::outcomes::book::StatusBook> {
        None
    }
    /// On the JetStream spool, the other nodes (`status ID` asks them for an id the book does not know).
    fn status_peers(&self) -> Option<&herald_spool::PeerLookup> {
        None
    }
    /// The outcome webhooks (`webhooks`), when the server runs them.
    fn webhooks(&self) -> Option<&crate::outcomes::webhook::Webhooks> {
        None
    }
    /// Live Activity channel management (`channels DOMAIN`), when the server offers it.
    fn channels(&self) -> Option<&crate::channels::ChannelManager> {
        None
    }
    /// Asks `herald serve` to stop (the console's `shutdown`).
    fn request_stop(&self);
    /// Reopens the log files; one message per file that could not be reopened.
    fn reopen_logs(&self) -> Vec<String>;
    /// Reads the configuration again (from `path`, or [`ServerHandle::config_path`]) and puts it in force if valid;
    /// once `path` is in force, later reloads without a path read it. The reload finishes even if the returned
    /// future is dropped.
    fn reload<'a>(
        &'a self,
        path: Option<&'a Path>,
    ) -> Pin<Box<dyn Future<Output = Result<ReloadReport, ReloadError>> + Send + 'a>>;
}
