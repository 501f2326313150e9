//! `herald demo` as a library: what the demo sends and what it must see afterwards.
//!
//! [`plan`] decides the device tokens of each demo app (deliverable, unregistered, bad, malformed) and checks the
//! outcomes against what each token must get; [`config`] writes the demo configuration; [`smtp_client`] is the
//! small SMTP client the demo injects MCMT messages with. The command (`cli/demo.rs`) wires them to a real
//! [`crate::server::Server`] and the APNs simulator: nothing here takes a shortcut around the production paths.

pub mod config;
pub mod plan;
pub mod smtp_client;
