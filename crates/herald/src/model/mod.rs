//! The leaf of the crate: the types the queue, the outbound pools and the logs all speak — the notification as
//! accepted and as queued, its message id, and Momentum's retry schedule. It names no other module of the crate,
//! so the modules that share these types depend on it and not on each other (tests/layering.rs pins this).

pub mod message;
pub mod retry;
