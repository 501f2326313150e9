//! Whole-configuration checks: combinations of options that are valid one by one but risky or without effect
//! together. Each finding is a warning naming the option, where it is set and what to do; `herald check` and
//! `herald serve` print them. The warnings are looked for only once a file loaded without errors. Three exceptions
//! are errors, and the configuration is refused: an empty `control_password` ([`security`]), two listen stanzas
//! that take one socket ([`listeners`]) and a listener's `tls_key` without `tls_certificate` ([`listener_tls`]).
//! They are looked for whatever else the file has wrong, so that they are reported with the other errors of the file, not only once those are fixed.
//!
//! One module per concern: [`apns`] (delivery options that misbehave with APNs), [`security`] (listeners and
//! console open wider than their protection), [`inert`] (options accepted but not acted on), [`spool`] (spool
//! options risky for the `jetstream` spool).

mod apns;
mod inert;
mod listener_tls;
pub(crate) mod listeners;
mod security;
mod spool;

use crate::{diag::Diagnostics, tree::Node};

/// Runs the checks over the loaded tree and records the findings in `diags` (warnings, but for the errors above):
/// every check when `warnings` is set (a file that loaded without errors), otherwise only those that find errors
/// (the tree then holds what loaded of a file with errors).
pub(crate) fn run(root: &Node, diags: &mut Diagnostics, warnings: bool) {
    listeners::errors(root, diags);
    listener_tls::errors(root, diags);
    if !warnings {
        security::errors(root, diags);
        return;
    }
    apns::check(root, diags);
    security::check(root, diags);
    inert::check(root, diags);
    spool::check(root, diags);
}
