//! Whole-configuration checks that run after a file loaded without errors: combinations of options that are valid
//! one by one but risky or without effect together. Each finding is a warning naming the option, where it is set
//! and what to do; `herald check` and `herald serve` print them. The one exception, an empty `control_password`
//! ([`security`]), is an error: the configuration is refused.
//!
//! One module per concern: [`apns`] (delivery options that misbehave with APNs), [`security`] (listeners and
//! console open wider than their protection), [`inert`] (options accepted but not acted on).

mod apns;
mod inert;
mod security;

use crate::{diag::Diagnostics, tree::Node};

/// Runs every check over the loaded tree and records the findings in `diags` (warnings, but for the one error).
pub(crate) fn run(root: &Node, diags: &mut Diagnostics) {
    apns::check(root, diags);
    security::check(root, diags);
    inert::check(root, diags);
}
