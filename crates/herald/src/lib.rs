//! herald: the push-notification MTA, as a library the `herald` binary and the tests drive.
//!
//! The modules follow the data flow: [`inbound`] validates what listeners receive and makes it durable,
//! notifications wait in the [`queue`] (per-domain active and delayed queues,
//! retry policy), go out through [`outbound`] (per-domain connection pools over herald-apns connections), and
//! every outcome is written to the Momentum-format [`logs`]. [`delivery`] turns the configuration into the
//! settings each domain delivers with.

pub mod access;
pub mod broadcasts;
pub mod channels;
pub mod control;
pub mod credentials;
pub mod dashboard;
pub mod delivery;
pub mod demo;
pub mod inbound;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod outbound;
pub mod outcomes;
pub mod queue;
pub mod server;
pub mod spool;
pub mod status;
pub mod tokens;
